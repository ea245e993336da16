"""The native zoo format: writer -> reader round trip, resume, crash safety, validation."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from wsl.archs import mlp, small_cnn
from wsl.errors import ZooFormatError
from wsl.zoo import ZooWriter, load_zoo
from wsl.zoo.format import shard_file

RECIPE = {"epochs": 2, "lr": [0.1, 0.01]}
DATASET = {"name": "toy", "input_shape": [4], "num_classes": 3}


def models(n: int, seed: int = 0, sizes: tuple[int, ...] = (4, 8, 3)) -> list[dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    return [mlp(list(sizes)).state_dict() for _ in range(n)]


def stack(sds: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}


def rows_for(n: int, start: int = 0, epochs: int = 2, prefix: str = "m") -> list[dict[str, Any]]:
    return [{"model_id": f"{prefix}{(start + i) // epochs}", "epoch": (start + i) % epochs, "seed": start + i,
             "hparams": {"lr": 0.1}, "test_accuracy": 0.5 + 0.01 * i, "train_loss": 1.0 - 0.01 * i}
            for i in range(n)]


def write_zoo(root: Path, n: int = 6, **kw: Any) -> list[dict[str, torch.Tensor]]:
    sds = models(n)
    with ZooWriter(root, name="toy", dataset=DATASET, recipe=RECIPE, **kw) as w:
        aid = w.add_architecture(mlp([4, 8, 3]))
        w.append(aid, stack(sds), rows_for(n), chunk="c0")
    return sds


def rewrite_card(root: Path, fn: Any) -> None:
    card = json.loads((root / "zoo.json").read_text())
    fn(card)
    (root / "zoo.json").write_text(json.dumps(card))


# ----------------------------------------------------------------------------- round trip
def test_round_trip_bit_exact_multi_arch_multi_shard(tmp_path: Path) -> None:
    a = models(7)
    torch.manual_seed(3)
    cnns = [small_cnn(norm="batch").state_dict() for _ in range(3)]
    for sd in cnns:
        sd["1.running_mean"].normal_()
        sd["1.num_batches_tracked"].fill_(17)
    per_row = sum(t.numel() * t.element_size() for t in a[0].values())
    with ZooWriter(tmp_path / "z", name="toy", dataset=DATASET, recipe=RECIPE, shard_max_bytes=2 * per_row) as w:
        a0 = w.add_architecture(mlp([4, 8, 3]))
        a1 = w.add_architecture(small_cnn(norm="batch"))
        w.append(a0, stack(a[:5]), rows_for(5), chunk="c0")
        w.append(a1, stack(cnns), [{"model_id": f"cnn{i}", "psnr": 3.5, "label": [1, 2]} for i in range(3)])
        w.append(a0, stack(a[5:]), rows_for(2, start=5), chunk="c1")
        assert w.completed_chunks() == {"c0", "c1"}
    zoo = load_zoo(tmp_path / "z")
    expected = a[:5] + cnns + a[5:]
    assert len(zoo) == 10
    card = zoo.card
    assert card["num_rows"] == 10 and card["num_models"] == 3 + 3 + 1
    assert [s["num_rows"] for s in card["shards"]] == [2, 2, 1, 1, 1, 1, 2]  # a CNN row exceeds the limit
    assert all(s["file"] == shard_file(s["arch"], k) for k, s in enumerate(card["shards"]))
    for i, want in enumerate(expected):
        got = zoo[i].state_dict()
        assert list(got) == list(want)  # state_dict order of the architecture
        for k in want:
            assert got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]), (i, k)
    meta = zoo[5].metadata
    assert meta["psnr"] == 3.5 and meta["label"] == [1, 2] and meta["arch"] == a1 and meta["epoch"] is None
    assert zoo[0].metadata["hparams"] == {"lr": 0.1} and zoo[0].metadata["row"] == 0
    lines = (tmp_path / "z" / "metadata.jsonl").read_bytes().splitlines()
    assert [json.loads(x)["row"] for x in lines] == list(range(10))
    assert hashlib.sha256(b"\n".join(lines) + b"\n").hexdigest() == card["metadata"]["sha256"]


def test_add_architecture_idempotent(tmp_path: Path) -> None:
    with ZooWriter(tmp_path / "z", name="toy", dataset={}, recipe={}) as w:
        a = w.add_architecture(mlp([4, 8, 3]))
        desc = {"kind": "builtin", "format": "wsl.arch/1", "name": "mlp", "kwargs": {"sizes": [4, 8, 3]}}
        assert w.add_architecture(desc) == a  # canonical form (defaults filled in, key order)
        assert w.add_architecture(mlp([4, 8, 2])) == "a1"
        entry = w.architectures[a]
        assert entry["num_parameters"] == 8 * 4 + 8 + 3 * 8 + 3
        assert list(entry["tensors"]) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    with ZooWriter.open(tmp_path / "z") as w:
        assert w.add_architecture(mlp([4, 8, 2])) == "a1"


def test_rows_and_splits_filled_by_writer(tmp_path: Path) -> None:
    sds = models(4)
    rows = [{"model_id": "x", "epoch": np.int64(0), "test_accuracy": np.float32(0.25), "test_loss": float("nan")},
            {"model_id": "x", "epoch": 1, "test_loss": float("inf")},
            {"model_id": "y", "split": "val"}, {"model_id": "y", "epoch": 3}]
    with ZooWriter(tmp_path / "z", name="toy", dataset={}, recipe={}, splits={"train": 1, "val": 0, "test": 0}) as w:
        w.append(w.add_architecture(mlp([4, 8, 3])), stack(sds), rows)
    zoo = load_zoo(tmp_path / "z")
    meta = zoo.rows
    assert [m["split"] for m in meta] == ["train", "train", "val", "val"]
    assert meta[0]["epoch"] == 0 and meta[0]["test_accuracy"] == 0.25 and meta[0]["test_loss"] is None
    assert meta[1]["test_loss"] is None and meta[2]["hparams"] == {} and meta[2]["seed"] is None


@pytest.mark.parametrize("mutate, match", [
    (lambda st, rows: st.pop("0.bias"), "missing"),
    (lambda st, rows: st.update(extra=torch.zeros(2)), "unexpected"),
    (lambda st, rows: st.update({"0.bias": torch.zeros(2, 9)}), "shape"),
    (lambda st, rows: rows.pop(), "rows"),
    (lambda st, rows: rows[0].update(row=3), "filled by the writer"),
    (lambda st, rows: rows[0].update(model_id=7), "model_id"),
    (lambda st, rows: rows[0].update(epoch=1.5), "epoch"),
    (lambda st, rows: rows[0].update(split="holdout"), "split"),
    (lambda st, rows: rows[0].update(hparams={"lr": float("nan")}), "hparams"),
    (lambda st, rows: rows[0].update(hparams=[1]), "hparams"),
    (lambda st, rows: rows[0].update(curve={"a": 1}), "curve"),
    (lambda st, rows: rows[0].update(test_accuracy="high"), "test_accuracy"),
    (lambda st, rows: rows[1].update(split="test"), "split"),
    (lambda st, rows: st.update({"0.weight": st["0.weight"].to("meta")}), "dense"),
])
def test_append_rejects_bad_input(tmp_path: Path, mutate: Any, match: str) -> None:
    sds = models(2)
    st, rows = stack(sds), [{"model_id": "a", "split": "train"}, {"model_id": "a"}]
    mutate(st, rows)
    with ZooWriter(tmp_path / "z", name="toy", dataset={}, recipe={}) as w:
        aid = w.add_architecture(mlp([4, 8, 3]))
        with pytest.raises(ZooFormatError, match=match):
            w.append(aid, st, rows)
        assert w.num_rows == 0
    assert len(load_zoo(tmp_path / "z")) == 0 and not list((tmp_path / "z" / "shards").iterdir())


def test_append_other_errors(tmp_path: Path) -> None:
    with ZooWriter(tmp_path / "z", name="toy", dataset={}, recipe={}) as w:
        with pytest.raises(ZooFormatError, match="unknown architecture id"):
            w.append("a9", stack(models(1)), [{"model_id": "a"}])
        aid = w.add_architecture(mlp([4, 8, 3]))
        w.append(aid, stack(models(1)), [{"model_id": "a"}], chunk="k")
        with pytest.raises(ZooFormatError, match="already written"):
            w.append(aid, stack(models(1)), [{"model_id": "b"}], chunk="k")
        with pytest.raises(ZooFormatError, match="non-empty list"):
            w.append(aid, stack(models(1)), [])
    with pytest.raises(ZooFormatError, match="closed"):
        w.append(aid, stack(models(1)), [{"model_id": "c"}])


def test_writer_refuses_other_content_and_resumes_same_zoo(tmp_path: Path) -> None:
    write_zoo(tmp_path / "z")
    with pytest.raises(ZooFormatError, match="different zoo"):
        ZooWriter(tmp_path / "z", name="other", dataset=DATASET, recipe=RECIPE)
    with ZooWriter(tmp_path / "z", name="toy", dataset=DATASET, recipe=RECIPE) as w:  # identical: resume
        assert w.num_rows == 6 and w.completed_chunks() == {"c0"}
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(ZooFormatError, match="not an empty directory"):
        ZooWriter(tmp_path / "junk", name="toy", dataset={}, recipe={})
    with pytest.raises(ZooFormatError, match="zoo.json is missing"):
        ZooWriter.open(tmp_path / "junk")
    with pytest.raises(ZooFormatError, match="splits"):
        ZooWriter(tmp_path / "new", name="toy", dataset={}, recipe={}, splits={"train": 0.5, "val": 0.1, "test": 0.1})


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    w = ZooWriter(tmp_path / "z", name="toy", dataset={}, recipe={})
    with pytest.raises(ZooFormatError, match="another process"):
        ZooWriter.open(tmp_path / "z")
    w.close()
    ZooWriter.open(tmp_path / "z").close()


def test_resume_appends_after_reopen(tmp_path: Path) -> None:
    sds = write_zoo(tmp_path / "z", n=4)
    more = models(2, seed=5)
    with ZooWriter.open(tmp_path / "z") as w:
        assert w.completed_chunks() == {"c0"} and w.model_ids() == {"m0", "m1"}
        assert w.append("a0", stack(more), rows_for(2, start=4), chunk="c1") == [4, 5]
    zoo = load_zoo(tmp_path / "z")
    assert len(zoo) == 6 and zoo.card["num_models"] == 3
    assert all(torch.equal(zoo[i].state_dict()["0.weight"], (sds + more)[i]["0.weight"]) for i in range(6))


# ------------------------------------------------------------------------------- crash safety
def test_crash_between_shard_and_card_update(tmp_path: Path) -> None:
    root = tmp_path / "z"
    write_zoo(root, n=4)
    card_before = (root / "zoo.json").read_bytes()
    with ZooWriter.open(root) as w:  # a complete append ...
        w.append("a0", stack(models(2, seed=9)), rows_for(2, start=4), chunk="c1")
    (root / "zoo.json").write_bytes(card_before)  # ... whose card update never happened
    with open(root / "metadata.jsonl", "ab") as fh:
        fh.write(b'{"row": 6, "model_id": "half-writ')  # and a torn metadata line
    orphan = root / "shards" / "a0-00001.safetensors"
    assert orphan.exists()
    zoo = load_zoo(root, verify="eager")
    assert len(zoo) == 4 and zoo.stacked()["0.weight"].shape[0] == 4
    new = models(3, seed=11)
    with ZooWriter.open(root) as w:
        assert w.completed_chunks() == {"c0"}
        w.append("a0", stack(new), rows_for(3, start=4), chunk="c1")
    zoo = load_zoo(root, verify="eager")
    assert len(zoo) == 7
    assert torch.equal(zoo[6].state_dict()["3.bias"], new[2]["3.bias"])
    assert len((root / "metadata.jsonl").read_bytes().splitlines()) == 7


def test_kill_9_during_appends_leaves_an_openable_zoo(tmp_path: Path) -> None:
    root = tmp_path / "z"
    script = textwrap.dedent(f"""
        import sys, torch
        from wsl.archs import mlp
        from wsl.zoo import ZooWriter
        w = ZooWriter({str(root)!r}, name="toy", dataset={{}}, recipe={{}})
        aid = w.add_architecture(mlp([4, 8, 3]))
        i = 0
        while True:
            sds = [mlp([4, 8, 3]).state_dict() for _ in range(3)]
            st = {{k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}}
            w.append(aid, st, [{{"model_id": f"m{{i}}-{{j}}"}} for j in range(3)], chunk=str(i))
            i += 1
            if i == 3:
                print("ready", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    zoo = load_zoo(root, verify="eager")
    n = len(zoo)
    assert n >= 9 and n % 3 == 0
    with ZooWriter.open(root) as w:
        done = w.completed_chunks()
        assert done == {str(i) for i in range(n // 3)}
        w.append("a0", stack(models(3)), [{"model_id": f"late{j}"} for j in range(3)], chunk="late")
    assert len(load_zoo(root, verify="eager")) == n + 3


# ------------------------------------------------------------------------------ corruption
def test_flipped_byte_is_a_checksum_error(tmp_path: Path) -> None:
    root = tmp_path / "z"
    write_zoo(root)
    shard = root / "shards" / "a0-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    zoo = load_zoo(root)  # lazy: opening reads no shard
    assert len(zoo) == 6
    with pytest.raises(ZooFormatError, match=r"sha256 mismatch.*shards\[0\]\.sha256"):
        zoo[0].state_dict()
    with pytest.raises(ZooFormatError, match="sha256 mismatch"):
        load_zoo(root, verify="eager")
    assert load_zoo(root, verify="none")[0].state_dict()["0.weight"].shape == (8, 4)


@pytest.mark.parametrize("keep", [5, 100, -8])
def test_truncated_shard_is_a_header_error(tmp_path: Path, keep: int) -> None:
    root = tmp_path / "z"
    write_zoo(root)
    shard = root / "shards" / "a0-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:keep])
    with pytest.raises(ZooFormatError, match="shard 0.*(header|truncated)"):
        load_zoo(root, verify="none")[1].state_dict()


def test_missing_shard_and_wrong_shard_contents(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    root = tmp_path / "z"
    write_zoo(root)
    shard = root / "shards" / "a0-00000.safetensors"
    shard.unlink()
    with pytest.raises(ZooFormatError, match="shard 0.*missing"):
        load_zoo(root).stacked()
    bad = stack(models(6))
    bad["0.weight"] = torch.zeros(6, 8, 5)
    save_file(bad, str(shard), metadata={"format": "wsl.zoo/1", "arch": "a0"})
    with pytest.raises(ZooFormatError, match="'0.weight' has shape"):
        load_zoo(root)[0].state_dict()
    save_file(stack(models(6)), str(shard), metadata={"format": "wsl.zoo/1", "arch": "a7"})
    with pytest.raises(ZooFormatError, match="__metadata__"):
        load_zoo(root)[0].state_dict()


@pytest.mark.parametrize("mutate, match", [
    (lambda c: c.update(format="wsl.zoo/2"), "unsupported zoo format 'wsl.zoo/2'"),
    (lambda c: c.pop("format"), "'format': missing"),
    (lambda c: c.pop("recipe"), "'recipe': missing"),
    (lambda c: c.update(color="red"), "'color': unknown field"),
    (lambda c: c.update(name=3), "'name': expected a string"),
    (lambda c: c.update(dataset=[]), "'dataset': expected an object"),
    (lambda c: c["splits"].update(train=0.5), "splits"),
    (lambda c: c["splits"].update(unit="row"), "splits.unit"),
    (lambda c: c["shards"][0].update(file="../../etc/passwd"), r"shards\[0\].file"),
    (lambda c: c["shards"][0].update(sha256="xyz"), r"shards\[0\].sha256"),
    (lambda c: c["shards"][0].update(arch="zz"), r"shards\[0\].arch"),
    (lambda c: c["shards"][0].update(num_rows=True), r"shards\[0\].num_rows"),
    (lambda c: c["shards"][0].pop("chunk"), r"shards\[0\]"),
    (lambda c: c.update(num_rows=7), "'num_rows'"),
    (lambda c: c.update(num_models=2), "num_models"),
    (lambda c: c["metadata"].update(num_rows=5), "metadata.num_rows"),
    (lambda c: c["architectures"]["a0"].update(num_parameters=-1), "architectures.a0.num_parameters"),
    (lambda c: c["architectures"]["a0"]["tensors"].update({"0.bias": "8"}), r"architectures.a0.tensors.0.bias"),
    (lambda c: c["architectures"]["a0"]["arch"].update(format="x"), "architectures.a0.arch.format"),
])
def test_bad_card_fields(tmp_path: Path, mutate: Any, match: str) -> None:
    root = tmp_path / "z"
    write_zoo(root)
    rewrite_card(root, mutate)
    with pytest.raises(ZooFormatError, match=match) as info:
        load_zoo(root)
    assert "zoo.json" in str(info.value)


def test_card_tensors_must_match_architecture(tmp_path: Path) -> None:
    root = tmp_path / "z"
    write_zoo(root)
    rewrite_card(root, lambda c: c["architectures"]["a0"]["arch"]["kwargs"].update(activation="tanh", sizes=[4, 9, 3]))
    zoo = load_zoo(root)
    with pytest.raises(ZooFormatError, match="architectures.a0"):
        zoo[0].module()


def test_not_json_and_not_a_zoo(tmp_path: Path) -> None:
    with pytest.raises(ZooFormatError, match="not a zoo directory"):
        load_zoo(tmp_path / "nope")
    (tmp_path / "zoo.json").write_text("{not json")
    with pytest.raises(ZooFormatError, match="zoo.json: not valid JSON"):
        load_zoo(tmp_path)
    with pytest.raises(ZooFormatError, match="verify"):
        load_zoo(tmp_path, verify="sometimes")


def _edit_rows(root: Path, fn: Any, fix_checksum: bool = True) -> None:
    lines = [json.loads(x) for x in (root / "metadata.jsonl").read_text().splitlines()]
    fn(lines)
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    (root / "metadata.jsonl").write_bytes(data)
    if fix_checksum:
        rewrite_card(root, lambda c: c["metadata"].update(sha256=hashlib.sha256(data).hexdigest()))


@pytest.mark.parametrize("mutate, match", [
    (lambda rows: rows[2].update(row=5), "row 2: field 'row'"),
    (lambda rows: rows[1].pop("model_id"), "row 1: field 'model_id': missing"),
    (lambda rows: rows[3].update(split="holdout"), "row 3: field 'split'"),
    (lambda rows: rows[0].update(epoch="1"), "row 0: field 'epoch'"),
    (lambda rows: rows[0].update(hparams=None), "row 0: field 'hparams'"),
    (lambda rows: rows[4].update(test_loss="low"), "row 4: field 'test_loss'"),
    (lambda rows: rows[4].update(curve={"x": 1}), "row 4: field 'curve'"),
    (lambda rows: rows[1].update(index=0), "row 1: field 'index'"),
    (lambda rows: rows[1].update(index=9), "row 1: field 'index'"),
    (lambda rows: rows[1].update(shard=3), "row 1: field 'shard'"),
    (lambda rows: rows[1].update(arch="a1"), "row 1: field 'arch'"),
    (lambda rows: rows[1].update(split="val" if rows[0]["split"] != "val" else "test"), "row 1: model 'm0'"),
    (lambda rows: rows.__setitem__(1, [1, 2]), "row 1: expected a JSON object"),
])
def test_bad_metadata_rows(tmp_path: Path, mutate: Any, match: str) -> None:
    root = tmp_path / "z"
    write_zoo(root)
    _edit_rows(root, mutate)
    with pytest.raises(ZooFormatError, match=match) as info:
        load_zoo(root)
    assert "metadata.jsonl" in str(info.value)


def test_metadata_checksum_and_row_count(tmp_path: Path) -> None:
    root = tmp_path / "z"
    write_zoo(root)
    _edit_rows(root, lambda rows: rows[0].update(test_accuracy=0.99), fix_checksum=False)
    with pytest.raises(ZooFormatError, match="metadata.sha256"):
        load_zoo(root)
    assert load_zoo(root, verify="none")[0].metadata["test_accuracy"] == 0.99
    _edit_rows(root, lambda rows: rows.pop())
    with pytest.raises(ZooFormatError, match="complete rows but zoo.json field 'num_rows' is 6"):
        load_zoo(root)
    (root / "metadata.jsonl").unlink()
    with pytest.raises(ZooFormatError, match="metadata.jsonl: missing"):
        load_zoo(root)

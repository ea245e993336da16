"""Compressed zoos (wsl.zoo-compressed/1): exact round trip at full rank, format round trip, load_zoo
behaving like the native zoo, typed errors on damaged files, and no zoo left by an interrupted write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from subspace_fixtures import write_zoo
from wsl.archs import REGISTRY
from wsl.errors import ZooFormatError
from wsl.subspace.basis import fit
from wsl.subspace.compress import compress
from wsl.subspace.stacks import TensorStack
from wsl.zoo import ZooWriter, load_zoo
from wsl.zoo.compressed import COMPRESSED_FORMAT
from wsl.zoo.store import ZooStore, file_sha256

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]


def close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float = 1e-5) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        scale = float(a[k].abs().max()) if a[k].numel() and a[k].is_floating_point() else 1.0
        assert torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=tol * max(scale, 1.0)), k


@pytest.fixture
def zoo_path(tmp_path: Path) -> Path:
    return write_zoo(tmp_path / "zoo", n=12, seed=3)


def two_arch_zoo(root: Path, n: int = 6, seed: int = 0) -> Path:
    """An MLP and a CNN with BatchNorm (int64 num_batches_tracked), several shards each."""
    gen = torch.Generator().manual_seed(seed)
    with ZooWriter(root, name="two", dataset={"name": "toy"}, recipe={}, shard_max_bytes=4000) as w:
        for net in (REGISTRY["mlp"](sizes=[5, 7, 3]), REGISTRY["small_cnn"](channels=[3, 4], norm="batch")):
            aid = w.add_architecture(net)
            sd = net.state_dict()
            stacked = {k: (torch.randint(0, 50, (n, *v.shape), generator=gen) if not v.is_floating_point()
                           else torch.randn(n, *v.shape, generator=gen)) for k, v in sd.items()}
            stacked = {k: v.abs() + 0.5 if k.endswith("running_var") else v for k, v in stacked.items()}
            rows = [{"model_id": f"{aid}-m{i}", "epoch": 3, "test_accuracy": float(i) / n} for i in range(n)]
            w.append(aid, stacked, rows)
    return root


def test_full_rank_round_trip_is_exact(zoo_path: Path, tmp_path: Path) -> None:
    native = load_zoo(zoo_path)
    for i, kw in enumerate(({"rank": 1000}, {"variance": 1.0})):
        comp = compress(zoo_path, tmp_path / f"c{i}", progress=False, **kw)
        assert comp.card["format"] == COMPRESSED_FORMAT
        for row in range(len(native)):
            close(native[row].state_dict(), comp[row].state_dict())
        ranks = {n: t["rank"] for n, t in comp.card["compression"]["bases"]["a0"]["tensors"].items()}
        assert ranks["0.weight"] == len(native) - 1 and ranks["6.bias"] == 3  # min(N - 1, P)


def test_reconstruction_is_the_basis_projection(zoo_path: Path, tmp_path: Path) -> None:
    native = load_zoo(zoo_path)
    comp = compress(zoo_path, tmp_path / "c", rank=2, progress=False)
    basis = fit(TensorStack(native.stacked()), rank=2)
    got = comp.stacked()
    for row in np.random.default_rng(0).permutation(len(native))[:6].tolist():
        close(basis.roundtrip(native[row].state_dict()), {k: v[row] for k, v in got.items()}, tol=1e-5)
    err = sum(float((native.stacked()[k] - got[k]).norm()) for k in got)
    assert err > 1e-3  # rank 2 of a noisy stack is lossy: the test would notice a copy of the weights


def test_format_round_trip(zoo_path: Path, tmp_path: Path) -> None:
    native = load_zoo(zoo_path)
    comp = compress(zoo_path, tmp_path / "c", rank=3, progress=False)
    assert comp.rows == native.rows
    assert (tmp_path / "c" / "metadata.jsonl").read_bytes() == (zoo_path / "metadata.jsonl").read_bytes()
    a, b = native.card, comp.card
    for field in ("name", "version", "description", "dataset", "recipe", "architectures", "splits", "num_rows",
                  "num_models", "metadata", "extra"):
        assert a[field] == b[field], field
    for split in ("train", "val", "test"):
        assert native.split(split).row_ids.tolist() == comp.split(split).row_ids.tolist()
    again = load_zoo(tmp_path / "c", verify="eager")
    close(comp.stacked(), again.stacked(), tol=0)
    fit = comp.card["compression"]["fit"]
    assert fit["rank"] == 3 and fit["rows"] == {"a0": len(native)} and fit["split"] is None


def test_load_zoo_behaves_like_native(tmp_path: Path) -> None:
    path = two_arch_zoo(tmp_path / "zoo")
    native, comp = load_zoo(path), compress(path, tmp_path / "c", rank=64, progress=False)
    assert len(comp.store.card["shards"]) > 2
    for view in (lambda z: z.filter(arch="a1"), lambda z: z.split("train"), lambda z: z.latest(),
                 lambda z: z.filter(lambda r: r["test_accuracy"] > 0.3)):
        nv, cv = view(native), view(comp)
        assert nv.row_ids.tolist() == cv.row_ids.tolist() and nv.rows == cv.rows
    cnn_n, cnn_c = native.filter(arch="a1"), comp.filter(arch="a1")
    order = np.random.default_rng(1).permutation(len(cnn_n))
    close(cnn_n.stacked(order), cnn_c.stacked(order))
    nbt = [k for k in cnn_c.stacked() if k.endswith("num_batches_tracked")]
    assert nbt and all(torch.equal(cnn_n.stacked()[k], cnn_c.stacked()[k]) for k in nbt)
    assert "1.num_batches_tracked" not in comp.card["compression"]["bases"]["a1"]["tensors"]
    x = torch.randn(3, 1, 8, 8)
    assert torch.allclose(cnn_n[2].module()(x), cnn_c[2].module()(x), atol=1e-4)
    fn, fc = cnn_n.features(), cnn_c.features()
    assert list(fn.blocks) == list(fc.blocks)
    assert all(torch.allclose(fn.blocks[k], fc.blocks[k], atol=1e-4) for k in fn.blocks)
    assert cnn_c.graphs().num_graphs == len(cnn_n)
    with pytest.raises(ZooFormatError, match="cannot be stacked"):
        comp.stacked()  # MLP and CNN rows have different layouts, as in the native zoo
    with pytest.raises(ZooFormatError, match="cannot be stacked"):
        native.stacked()


def test_fit_on_one_split(zoo_path: Path, tmp_path: Path) -> None:
    native = load_zoo(zoo_path)
    comp = compress(zoo_path, tmp_path / "c", rank=1000, split="train", progress=False)
    assert comp.card["compression"]["fit"]["rows"] == {"a0": len(native.split("train"))}
    close(native.split("train").stacked(), comp.split("train").stacked())
    held = native.split("test").stacked()
    assert any(float((held[k] - v).abs().max()) > 1e-3 for k, v in comp.split("test").stacked().items())


def test_native_reader_refuses_and_merge_decompresses(zoo_path: Path, tmp_path: Path) -> None:
    from wsl.zoo.merge import merge_zoos

    comp = compress(zoo_path, tmp_path / "c", rank=2, progress=False)
    with pytest.raises(ZooFormatError, match="unsupported zoo format 'wsl.zoo-compressed/1'"):
        ZooStore(tmp_path / "c", "lazy")
    merged = merge_zoos(tmp_path / "d", [tmp_path / "c"])
    assert merged.card["format"] == "wsl.zoo/1" and "compression" not in merged.card
    assert merged.rows == comp.rows
    close(comp.stacked(), merged.stacked(), tol=0)


def _rewrite_card(root: Path, edit) -> None:  # type: ignore[no-untyped-def]
    card = json.loads((root / "zoo.json").read_text())
    edit(card)
    (root / "zoo.json").write_text(json.dumps(card))


def test_corrupt_coefficients_name_the_file(zoo_path: Path, tmp_path: Path) -> None:
    compress(zoo_path, tmp_path / "c", rank=2, progress=False)
    shard = tmp_path / "c" / "shards" / "a0-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ZooFormatError, match=r"a0-00000\.safetensors.*sha256 mismatch"):
        load_zoo(tmp_path / "c").stacked()
    load_zoo(tmp_path / "c", verify="none").stacked()  # the header is intact: no checksum, no error
    shard.write_bytes(bytes(data[:-40]))
    with pytest.raises(ZooFormatError, match=r"a0-00000\.safetensors.*(truncated|bytes)"):
        load_zoo(tmp_path / "c", verify="none").stacked()


def test_corrupt_or_incomplete_basis_names_the_file(zoo_path: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    compress(zoo_path, tmp_path / "c", rank=2, progress=False)
    basis = tmp_path / "c" / "bases" / "a0.safetensors"
    good = basis.read_bytes()
    data = bytearray(good)
    data[-3] ^= 0x01
    basis.write_bytes(bytes(data))
    with pytest.raises(ZooFormatError, match=r"bases/a0\.safetensors.*sha256 mismatch"):
        load_zoo(tmp_path / "c")[0].state_dict()
    with pytest.raises(ZooFormatError, match=r"bases/a0\.safetensors.*sha256 mismatch"):
        load_zoo(tmp_path / "c", verify="eager")
    basis.write_bytes(good)
    tensors = load_file(str(basis))
    del tensors["3.weight.dirs"]
    save_file(tensors, str(basis), metadata={"format": COMPRESSED_FORMAT, "arch": "a0"})

    def fix(card: dict) -> None:  # a consistent card, so the missing tensor itself is what fails
        card["compression"]["bases"]["a0"].update(bytes=basis.stat().st_size, sha256=file_sha256(basis))
    _rewrite_card(tmp_path / "c", fix)
    with pytest.raises(ZooFormatError, match=r"bases/a0\.safetensors.*missing basis tensor '3\.weight\.dirs'"):
        load_zoo(tmp_path / "c").stacked()
    basis.unlink()
    with pytest.raises(ZooFormatError, match=r"bases/a0\.safetensors.*missing"):
        load_zoo(tmp_path / "c").stacked()


def test_bad_card_is_refused_at_open(zoo_path: Path, tmp_path: Path) -> None:
    compress(zoo_path, tmp_path / "c", rank=2, progress=False)
    cases = [(lambda c: c["compression"]["bases"]["a0"]["tensors"]["0.bias"].update(rank=11), "rank"),
             (lambda c: c["compression"]["bases"].pop("a0"), "compression.bases"),
             (lambda c: c["compression"]["bases"]["a0"].update(file="../x.safetensors"), "file"),
             (lambda c: c.pop("compression"), "compression"),
             (lambda c: c.update(num_rows=3), "num_rows")]
    original = (tmp_path / "c" / "zoo.json").read_text()
    for edit, field in cases:
        (tmp_path / "c" / "zoo.json").write_text(original)
        _rewrite_card(tmp_path / "c", edit)
        with pytest.raises(ZooFormatError, match=rf"zoo\.json: field '[^']*{field}"):
            load_zoo(tmp_path / "c")
    (tmp_path / "c" / "zoo.json").write_text(original)
    _rewrite_card(tmp_path / "c", lambda c: c["compression"]["bases"]["a0"]["tensors"]["0.bias"].update(rank=1))
    with pytest.raises(ZooFormatError, match=r"shards/a0-00000\.safetensors.*'0\.bias' has shape"):
        load_zoo(tmp_path / "c").stacked()


def test_failed_write_leaves_no_zoo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wsl.zoo.compressed_writer as cw

    path = two_arch_zoo(tmp_path / "zoo")
    real, calls = cw._project_shard, []

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cw, "_project_shard", flaky)
    with pytest.raises(KeyboardInterrupt):
        compress(path, tmp_path / "out", rank=2, progress=False)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zoo"]  # the temp folder is gone too
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ZooFormatError, match="not an empty directory"):
        compress(path, tmp_path / "busy", rank=2, progress=False)


def test_killed_write_leaves_no_zoo(tmp_path: Path) -> None:
    path = two_arch_zoo(tmp_path / "zoo")
    code = textwrap.dedent(f"""
        import sys, time
        import wsl.zoo.compressed_writer as cw
        real = cw._project_shard
        def slow(*a, **k):
            out = real(*a, **k)
            print("shard", flush=True)
            time.sleep(30)
            return out
        cw._project_shard = slow
        from wsl.subspace.compress import compress
        compress({str(path)!r}, {str(tmp_path / 'out')!r}, rank=2, progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"shard"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(0.05)
    assert not (tmp_path / "out").exists()
    with pytest.raises(ZooFormatError, match="not a zoo directory"):
        load_zoo(tmp_path / "out")


def test_cli_compress_and_info(zoo_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from wsl.cli import main

    assert main(["zoo", "compress", str(zoo_path), "--rank", "2", "-o", str(tmp_path / "c"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "ratio" in out and "->" in out
    comp = load_zoo(tmp_path / "c")
    info = comp.card["compression"]
    before = info["source"]["weight_bytes"]
    after = sum(b["bytes"] for b in info["bases"].values()) + sum(s["bytes"] for s in comp.card["shards"])
    assert f"ratio {before / after:.2f}x" in out and f"{before:,} B" in out
    assert main(["zoo", "info", str(tmp_path / "c"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == COMPRESSED_FORMAT and summary["compression"]["fit"]["rank"] == 2
    assert summary["disk_bytes"] >= after
    assert main(["zoo", "compress", str(zoo_path), "--variance", "0.9", "-o", str(tmp_path / "v"), "--quiet"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["zoo", "compress", str(zoo_path), "--rank", "2", "--variance", "0.5", "-o", str(tmp_path / "x")])


def test_nonfinite_rows_are_left_out_of_the_fit(tmp_path: Path) -> None:
    path = tmp_path / "zoo"
    net = REGISTRY["mlp"](sizes=[4, 6, 3])
    gen = torch.Generator().manual_seed(5)
    stacked = {k: torch.randn(8, *v.shape, generator=gen) for k, v in net.state_dict().items()}
    stacked["0.weight"][3, 0, 0] = float("nan")
    with ZooWriter(path, name="nan", dataset={"name": "toy"}, recipe={}) as w:
        w.append(w.add_architecture(net), stacked, [{"model_id": f"m{i}"} for i in range(8)])
    with pytest.warns(UserWarning, match="non-finite"):
        comp = compress(path, tmp_path / "c", rank=100, progress=False)
    assert comp.card["compression"]["fit"]["nonfinite_rows"] == {"a0": [3]}
    got = comp.stacked()
    keep = [i for i in range(8) if i != 3]
    close({k: v[keep] for k, v in stacked.items()}, {k: v[keep] for k, v in got.items()})
    assert not torch.isfinite(got["0.weight"][3]).all()


def test_push_refuses_a_compressed_zoo(zoo_path: Path, tmp_path: Path) -> None:
    pytest.importorskip("huggingface_hub")
    from wsl.hub.push import push_zoo

    compress(zoo_path, tmp_path / "c", rank=2, progress=False)
    with pytest.raises(ZooFormatError, match="only native zoos are pushed"):
        push_zoo(tmp_path / "c", "hf://datasets/someone/toy-c")

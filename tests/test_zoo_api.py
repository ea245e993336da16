"""The Zoo API: views, batched access, modules, graphs/features, Dataset, merge and the CLI."""

from __future__ import annotations

import builtins
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import wsl
from wsl.archs import mlp
from wsl.cli import main
from wsl.errors import ZooFormatError
from wsl.zoo import ZooDataset, ZooIndexError, ZooWriter, load_zoo, merge_zoos
from wsl.zoo.format import assign_split, default_splits, shard_file

RECIPE = {"epochs": 3}
DATASET = {"name": "toy", "input_shape": [4], "num_classes": 3}


def stack(sds: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}


def make_zoo(root: Path, prefix: str = "m", models: int = 4, epochs: int = 3, seed: int = 0,
             act2: str = "tanh", name: str = "toy", shard_max_bytes: int = 1 << 30) -> list[dict[str, torch.Tensor]]:
    """``models`` relu MLPs + 2 ``act2`` MLPs (same tensor layout), ``epochs`` checkpoints each."""
    torch.manual_seed(seed)
    sds, out = [], []
    with ZooWriter(root, name=name, dataset=DATASET, recipe=RECIPE, shard_max_bytes=shard_max_bytes) as w:
        for act, count in (("relu", models), (act2, 2)):
            aid = w.add_architecture(mlp([4, 8, 3], activation=act))
            sds = [mlp([4, 8, 3], activation=act).state_dict() for _ in range(count * epochs)]
            rows = [{"model_id": f"{prefix}-{act}-{i // epochs}", "epoch": i % epochs, "seed": seed,
                     "hparams": {"lr": 0.1 * (1 + i // epochs)}, "test_accuracy": round(0.3 + 0.05 * i, 4),
                     "train_accuracy": 0.9, "psnr": float(i)} for i in range(count * epochs)]
            w.append(aid, stack(sds), rows, chunk=act)
            out += sds
    return out


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, torch.Tensor]]]:
    root = tmp_path_factory.mktemp("zoo") / "z"
    return root, make_zoo(root, shard_max_bytes=3 * 4 * (32 + 8 + 24 + 3))


def test_views(zoo_dir: Any) -> None:
    root, _ = zoo_dir
    zoo = wsl.load_zoo(root)
    assert len(zoo) == 18 and zoo.name == "toy"
    assert len(zoo.model_ids()) == 6
    latest = zoo.latest()
    assert len(latest) == 6 and set(latest.column("epoch").tolist()) == {2}
    relu = zoo.filter(arch="a0")
    assert len(relu) == 12 and len(relu.filter(epoch=0)) == 4
    assert len(zoo.filter(lambda r: r["test_accuracy"] > 0.5, epoch=2)) == len(
        [r for r in zoo.rows if r["test_accuracy"] > 0.5 and r["epoch"] == 2])
    parts = [zoo.split(s) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 18
    for a in parts:
        for b in parts:
            if a is not b:
                assert not set(a.model_ids()) & set(b.model_ids())  # no leakage between splits
    assert zoo.column("epoch").dtype == np.int64
    assert np.allclose(zoo.column("hparams.lr")[:3], 0.1)
    assert zoo.column("model_id").dtype == object
    sub = zoo[2:5]
    assert len(sub) == 3 and sub[0].row == 2 and sub.row_ids.tolist() == [2, 3, 4]
    assert zoo[-1].row == 17 and zoo[[5, 1]].row_ids.tolist() == [5, 1]
    assert [m.row for m in relu.filter(epoch=1)] == [1, 4, 7, 10]
    with pytest.raises(ZooIndexError):
        zoo[18]
    with pytest.raises(IndexError):
        zoo[-19]
    with pytest.raises(ZooFormatError, match="no row has a field 'colour'"):
        zoo.filter(colour="red")
    with pytest.raises(ZooFormatError, match="unknown split"):
        zoo.split("holdout")
    with pytest.raises(ZooFormatError, match="integers"):
        zoo.stacked([0.5])
    m = zoo[4]
    m.metadata["epoch"] = 99  # a copy
    assert zoo[4].metadata["epoch"] == 1 and "m-relu-1" in repr(m)


def test_stacked_gathers_across_shards_and_archs(zoo_dir: Any) -> None:
    root, sds = zoo_dir
    zoo = load_zoo(root)
    assert len(zoo.card["shards"]) > 4
    order = [17, 0, 5, 5, 12, 3, 4, 16]
    got = zoo.stacked(order)
    assert list(got) == list(sds[0])
    for k, t in got.items():
        assert torch.equal(t, torch.stack([sds[i][k] for i in order]))
    whole = zoo.filter(arch="a0").stacked()  # relu and tanh share tensor names/shapes
    assert torch.equal(whole["3.bias"], torch.stack([sd["3.bias"] for sd in sds[:12]]))
    view = zoo[[1, 2, 3]]
    assert torch.equal(view.stacked()["0.weight"], torch.stack([sds[i]["0.weight"] for i in (1, 2, 3)]))
    assert torch.equal(zoo.stacked(torch.tensor([2]), device="cpu")["0.bias"][0], sds[2]["0.bias"])


def test_stacked_refuses_different_layouts(tmp_path: Path) -> None:
    with ZooWriter(tmp_path / "z", name="toy", dataset={}, recipe={}) as w:
        for sizes in ([4, 8, 3], [4, 5, 3]):
            aid = w.add_architecture(mlp(sizes))
            w.append(aid, stack([mlp(sizes).state_dict()]), [{"model_id": str(sizes)}])
    zoo = load_zoo(tmp_path / "z")
    with pytest.raises(ZooFormatError, match="cannot be stacked"):
        zoo.stacked()
    with pytest.raises(ZooFormatError, match="one architecture"):
        zoo.features()
    batch = zoo.graphs()  # graphs of different architectures are fine
    assert batch.num_graphs == 2
    assert batch[1].num_nodes == 4 + 5 + 3 and batch[0].num_nodes == 4 + 8 + 3


def test_module_space_features_graphs(zoo_dir: Any) -> None:
    root, sds = zoo_dir
    zoo = load_zoo(root)
    x = torch.randn(5, 4)
    for i in (0, 14):
        ref = mlp([4, 8, 3], activation="relu" if i < 12 else "tanh")
        ref.load_state_dict(sds[i])
        module = zoo[i].module()
        assert not module.training
        assert torch.equal(module(x), ref(x))
    assert zoo[0].space is zoo[3].space and zoo[0].space is not zoo[13].space
    assert zoo[0].space.num_parameters == zoo.card["architectures"]["a0"]["num_parameters"]
    feats = zoo.filter(arch="a0").features([0, 1, 2])
    assert feats.num_models == 3
    assert torch.equal(feats.to_state_dicts()["0.weight"], torch.stack([sds[i]["0.weight"] for i in (0, 1, 2)]))
    mixed = zoo.graphs([13, 0, 12])
    assert mixed.num_graphs == 3
    from wsl.graph import decode, to_graphs

    for g, i in zip(to_graphs(mixed), (13, 0, 12)):
        dec = decode(g, zoo[i].space)
        assert all(torch.equal(dec[k], sds[i][k]) for k in sds[i])


def test_dataset_views_and_workers(zoo_dir: Any) -> None:
    root, sds = zoo_dir
    zoo = load_zoo(root)
    ds = ZooDataset(zoo, target="test_accuracy")
    assert len(ds) == 18
    sd, y = ds[3]
    assert torch.equal(sd["0.weight"], sds[3]["0.weight"]) and y.item() == pytest.approx(0.45)
    loader = DataLoader(ds, batch_size=4, num_workers=2, collate_fn=ds.collate, shuffle=False)
    ys, ws = [], []
    for stacked, yb in loader:
        ys.append(yb)
        ws.append(stacked["3.weight"])
    assert torch.equal(torch.cat(ys), torch.tensor(zoo.column("test_accuracy"), dtype=torch.float32))
    assert torch.equal(torch.cat(ws), torch.stack([sd["3.weight"] for sd in sds]))

    gds = ZooDataset(zoo, target=["test_accuracy", "train_accuracy"], view="graph")
    batch = next(iter(DataLoader(gds, batch_size=5, num_workers=2, collate_fn=gds.collate)))
    assert batch.num_graphs == 5 and batch.y.shape == (5, 2)
    fds = ZooDataset(zoo.filter(arch="a0"), view="features", transform=lambda sd: {k: v * 2 for k, v in sd.items()})
    feats, yb = fds.collate([fds[0], fds[1]])
    assert feats.num_models == 2 and torch.equal(feats.to_state_dicts()["0.bias"][1], 2 * sds[1]["0.bias"])
    assert ZooDataset(zoo, target=None)[0][1].shape == (0,)


def test_dataset_spawn_workers_reopen_shards(zoo_dir: Any) -> None:
    root, sds = zoo_dir
    zoo = load_zoo(root)
    zoo.stacked([0])  # the parent has open shard handles; workers must not inherit them
    ds = ZooDataset(zoo.filter(arch="a0"), target="psnr")
    loader = DataLoader(ds, batch_size=6, num_workers=2, collate_fn=ds.collate, multiprocessing_context="spawn")
    got = [stacked["0.bias"] for stacked, _ in loader]
    assert torch.equal(torch.cat(got), torch.stack([sd["0.bias"] for sd in sds[:12]]))


def test_dataset_errors(tmp_path: Path, zoo_dir: Any) -> None:
    zoo = load_zoo(zoo_dir[0])
    with pytest.raises(ZooFormatError, match="unknown view"):
        ZooDataset(zoo, view="pixels")
    with pytest.raises(ZooFormatError, match="not numeric"):
        ZooDataset(zoo, target="model_id")
    with pytest.raises(ZooFormatError, match="no row has a field"):
        ZooDataset(zoo, target="accuracy")
    with ZooWriter(tmp_path / "z", name="toy", dataset={}, recipe={}) as w:
        aid = w.add_architecture(mlp([4, 8, 3]))
        w.append(aid, stack([mlp([4, 8, 3]).state_dict()] * 2), [{"model_id": "a", "test_accuracy": 0.5},
                                                                   {"model_id": "b"}])
    with pytest.raises(ZooFormatError, match="row 1: target 'test_accuracy' is null"):
        ZooDataset(load_zoo(tmp_path / "z"))


def test_merge_parts(tmp_path: Path) -> None:
    a = make_zoo(tmp_path / "p0", prefix="p0", seed=0)
    b = make_zoo(tmp_path / "p1", prefix="p1", seed=1)
    out = merge_zoos(tmp_path / "all", [tmp_path / "p0", tmp_path / "p1"])
    assert len(out) == 36 and len(out.model_ids()) == 12 and out.card["num_models"] == 12
    assert sorted(out.architectures) == ["a0", "a1"]
    assert [r["row"] for r in out.rows] == list(range(36))
    for i, sd in enumerate(a + b):
        assert torch.equal(out[i].state_dict()["0.weight"], sd["0.weight"])
    src = tmp_path / "p0" / load_zoo(tmp_path / "p0").card["shards"][0]["file"]
    dst = tmp_path / "all" / out.card["shards"][0]["file"]
    assert os.stat(src).st_ino == os.stat(dst).st_ino  # hard-linked, not copied
    load_zoo(tmp_path / "all", verify="eager")
    assert merge_zoos(tmp_path / "again", [tmp_path / "p0", tmp_path / "all"]).card["num_rows"] == 36  # dupes equal
    with pytest.raises(ZooFormatError, match="not an empty directory"):
        merge_zoos(tmp_path / "all", [tmp_path / "p0"])


def test_merge_remaps_clashing_arch_ids_and_views(tmp_path: Path) -> None:
    make_zoo(tmp_path / "p0", prefix="p0", act2="tanh")
    make_zoo(tmp_path / "p1", prefix="p1", act2="sigmoid")  # a1 is a different architecture here
    out = merge_zoos(tmp_path / "m", [tmp_path / "p0", tmp_path / "p1"], link=False)
    acts = {aid: e["arch"]["kwargs"]["activation"] for aid, e in out.architectures.items()}
    assert sorted(acts.values()) == ["relu", "sigmoid", "tanh"]
    sig = [aid for aid, act in acts.items() if act == "sigmoid"][0]
    part = out.filter(arch=sig)
    assert len(part) == 6 and part[0].model_id.startswith("p1-sigmoid")
    x = torch.randn(2, 4)
    assert torch.equal(part[0].module()(x), load_zoo(tmp_path / "p1").filter(arch="a1")[0].module()(x))
    load_zoo(tmp_path / "m", verify="eager")
    view = load_zoo(tmp_path / "p0").filter(epoch=2)
    small = merge_zoos(tmp_path / "latest", [view])
    assert len(small) == 6 and set(small.column("epoch").tolist()) == {2}
    load_zoo(tmp_path / "latest", verify="eager")


def test_merge_conflicts(tmp_path: Path) -> None:
    make_zoo(tmp_path / "p0", prefix="p", seed=0)
    make_zoo(tmp_path / "p1", prefix="p", seed=1)  # same model_ids, different rows
    with pytest.raises(ZooFormatError, match="model_id 'p-relu-0'"):
        merge_zoos(tmp_path / "m", [tmp_path / "p0", tmp_path / "p1"])
    assert not (tmp_path / "m").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".m")]
    make_zoo(tmp_path / "other", prefix="q", name="other")
    with pytest.raises(ZooFormatError, match="field 'name' differs"):
        merge_zoos(tmp_path / "m", [tmp_path / "p0", tmp_path / "other"])
    with pytest.raises(ZooFormatError, match="given twice"):
        merge_zoos(tmp_path / "m", [tmp_path / "p0", tmp_path / "p0"])


def test_cli_info_show_merge(zoo_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, sds = zoo_dir
    assert main(["zoo", "info", str(root), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["num_models"] == 6 and info["num_rows"] == 18
    assert sum(v["rows"] for v in info["splits"].values()) == 18
    assert [a["id"] for a in info["architectures"]] == ["a0", "a1"] and info["architectures"][0]["rows"] == 12
    acc = info["metrics"]["test_accuracy"]
    assert acc["min"] == pytest.approx(0.3) and acc["max"] == pytest.approx(0.3 + 0.05 * 11) and "psnr" in info["metrics"]
    assert info["disk_bytes"] > sum(s["bytes"] for s in load_zoo(root).card["shards"])
    assert main(["zoo", "info", str(root), "--verify"]) == 0
    text = capsys.readouterr().out
    assert "models 6" in text and "test_accuracy" in text and "verified" in text
    assert main(["zoo", "show", str(root), "4", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["metadata"]["row"] == 4 and shown["tensors"][0]["shape"] == [8, 4]
    assert shown["tensors"][0]["mean"] == pytest.approx(float(sds[4]["0.weight"].double().mean()))
    assert main(["zoo", "show", str(root), "m-relu-1"]) == 0
    assert "epoch            2" in capsys.readouterr().out
    assert main(["zoo", "show", str(root), "nobody"]) == 2
    assert "nobody" in capsys.readouterr().err
    assert main(["zoo", "info", str(tmp_path / "missing")]) == 2
    assert "not a zoo directory" in capsys.readouterr().err
    assert main(["zoo", "merge", str(tmp_path / "m"), str(root)]) == 0
    assert "18 rows" in capsys.readouterr().out
    assert len(load_zoo(tmp_path / "m")) == 18


def test_shard_file_folders_and_split_rule() -> None:
    assert shard_file("a0", 3) == "shards/a0-00003.safetensors"
    assert shard_file("a1", 5001) == "shards/001/a1-05001.safetensors"
    splits = default_splits()
    ids = [f"model-{i}" for i in range(3000)]
    got = [assign_split(m, splits) for m in ids]
    assert got == [assign_split(m, splits) for m in ids]  # deterministic
    frac = {s: got.count(s) / len(ids) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.8) < 0.04 and abs(frac["val"] - 0.1) < 0.03
    assert got != [assign_split(m, dict(splits, seed=1)) for m in ids]


def test_opening_touches_no_shard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors

    n = 20_000
    root = tmp_path / "big"
    st = {"0.weight": torch.randn(n, 1, 1), "0.bias": torch.randn(n, 1)}
    rows = [{"model_id": f"m{i // 2}", "epoch": i % 2, "test_accuracy": (i % 97) / 97} for i in range(n)]
    with ZooWriter(root, name="big", dataset={}, recipe={}, shard_max_bytes=800) as w:
        w.append(w.add_architecture(mlp([1, 1])), st, rows)
    opened: list[str] = []
    real_open = builtins.open

    def spy_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(os.fspath(file) if isinstance(file, (str, os.PathLike)) else str(file))
        return real_open(file, *args, **kwargs)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a shard was opened")

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr("wsl.io.read_safetensors_header", refuse)
    zoo = load_zoo(root)
    assert len(zoo) == n and len(zoo.card["shards"]) > 100
    assert len(zoo.filter(epoch=1)) == n // 2
    assert len(zoo.split("train")) + len(zoo.split("val")) + len(zoo.split("test")) == n
    assert len(zoo.latest()) == n // 2
    assert zoo.column("test_accuracy").shape == (n,)
    assert len(zoo.filter(lambda r: r["test_accuracy"] > 0.5)) > 0
    assert not [p for p in opened if "shards" in p]
    monkeypatch.undo()
    assert torch.equal(zoo.stacked([n - 1, 0])["0.bias"], st["0.bias"][[n - 1, 0]])

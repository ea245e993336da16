"""Vectorized zoo generation: optimizer math, equivalence with per-model training, recipes,
determinism, sharding + merge, kill-and-resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from wsl.errors import ConfigError, WslError
from wsl.zoo.optim import VecOptimizer

ROOT = Path(__file__).resolve().parents[1]
ZOOS = ROOT / "zoos"
TORCH_OPT = {"sgd": (torch.optim.SGD, {"momentum": 0.9}), "adam": (torch.optim.Adam, {}),
             "rmsprop": (torch.optim.RMSprop, {})}


@pytest.fixture(autouse=True)
def _env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A private data cache, and one torch thread (tiny networks; avoids stalls on a busy machine)."""
    monkeypatch.setenv("WSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", ["sgd", "adam", "rmsprop"])
def test_optimizer_step_matches_torch(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(3, 40, generator=g)
    lrs, wds = [0.01, 0.003, 0.05], [0.0, 1e-3, 1e-2]
    kinds = [kind, "adam" if kind != "adam" else "sgd", "rmsprop" if kind != "rmsprop" else "sgd"]
    flat = p0.clone()
    vec = VecOptimizer(kinds, lrs, wds, 40)
    refs = []
    for i, k in enumerate(kinds):
        w = torch.nn.Parameter(p0[i].clone())
        cls, kw = TORCH_OPT[k]
        refs.append((w, cls([w], lr=lrs[i], weight_decay=wds[i], **kw)))
    for _ in range(15):
        grads = torch.randn(3, 40, generator=g)
        vec.step(flat, grads)
        for i, (w, opt) in enumerate(refs):
            w.grad = grads[i].clone()
            opt.step()
    for i, (w, _) in enumerate(refs):
        torch.testing.assert_close(flat[i], w.detach(), atol=1e-6, rtol=1e-6)


def test_optimizer_freezes_non_finite_rows() -> None:
    flat = torch.zeros(2, 3)
    vec = VecOptimizer(["sgd", "sgd"], [0.1, 0.1], [0.0, 0.0], 3)
    ok = vec.step(flat, torch.tensor([[1.0, 1.0, 1.0], [float("nan"), 0.0, 0.0]]))
    assert ok.tolist() == [True, False]
    assert torch.isfinite(flat).all() and flat[1].abs().sum() == 0
    with pytest.raises(ConfigError, match="model 1"):
        VecOptimizer(["sgd", "lbfgs"], [0.1, 0.1], [0, 0], 3)


def _bn_desc() -> dict:
    return {"format": "wsl.arch/1", "kind": "sequential", "input_shape": [1, 8, 8], "layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1, "bias": False},
        {"type": "batchnorm2d"}, {"type": "gelu"}, {"type": "dropout", "p": 0.0},
        {"type": "residual", "body": [{"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
                                      {"type": "tanh"}], "shortcut": None},
        {"type": "global_avg_pool"}, {"type": "linear", "out_features": 10}]}


@pytest.mark.parametrize("arch", ["small_cnn", "bn_residual", "mlp"])
def test_vectorized_training_equals_per_model_training(arch: str) -> None:
    """Same init, same batches (incl. a partial last batch), dropout 0: same weights after 2 epochs."""
    from wsl.archs import build, describe, mlp, small_cnn
    from wsl.zoo.data import digits, epoch_batches
    from wsl.zoo.recipes import init_rows
    from wsl.zoo.optim import ModelRun, train_chunk
    from wsl.zoo.vectorized import VecNet

    data = digits()
    if arch == "small_cnn":
        desc = describe(small_cnn(activation="relu"))
        acts: list[str | None] = ["relu", "tanh", "relu"]
    elif arch == "mlp":
        desc = describe(mlp([64, 16, 10], activation="relu"))
        acts = ["tanh", "relu", "gelu"]
    else:
        desc, acts = _bn_desc(), [None, None, None]
    x = data.x_train if arch != "mlp" else data.x_train.reshape(-1, 64)
    net = VecNet(desc)
    inits = init_rows(net, [("normal", 0.2), ("uniform", 0.3), ("orthogonal", 0.1)], [1, 2, 3])
    subsets = [torch.arange(70), torch.arange(100, 140), torch.arange(200, 232)]  # 3, 2, 1 batches
    opts = ["sgd", "adam", "rmsprop"]
    runs = [ModelRun(opts[i], 0.02, 1e-3, 0.0, acts[i], subsets[i], inits[i], 10 + i) for i in range(3)]
    res = train_chunk(net, runs, x, data.y_train, batch_size=32, epochs=2, checkpoints=[1, 2], seed=0)
    sched, steps = epoch_batches(subsets, [10, 11, 12], 32, 2)
    for i in range(3):
        d = dict(desc)
        if acts[i] is not None:
            d = describe(small_cnn(activation=acts[i])) if arch == "small_cnn" else \
                describe(mlp([64, 16, 10], activation=acts[i]))
        model = build(d)
        ref = net.unflatten(inits[i:i + 1])
        model.load_state_dict({k: v[0] for k, v in ref.items()})
        model.train()
        cls, kw = TORCH_OPT[opts[i]]
        opt = cls(model.parameters(), lr=0.02, weight_decay=1e-3, **kw)
        for t in range(2 * steps[i]):
            idx = sched[i, t][sched[i, t] >= 0]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), data.y_train[idx]).backward()
            opt.step()
        got = net.unflatten(res.params[i, 1:2], {k: v[i, 1:2] for k, v in res.buffers.items()})
        for key, value in model.state_dict().items():
            torch.testing.assert_close(got[key][0], value, atol=2e-5, rtol=1e-4, msg=f"model {i} {key}")


def _generate(recipe: str, out: Path, *args: str) -> None:
    from wsl.cli import main

    workers = [] if "--workers" in args else ["--workers", "1"]
    assert main(["zoo", "generate", str(ZOOS / recipe), "-o", str(out), "--quiet", "--device", "cpu", *workers,
                 *args]) == 0


def _content(root: Path) -> tuple[list[dict], dict[str, dict[str, torch.Tensor]]]:
    from wsl.zoo import load_zoo

    zoo = load_zoo(root)
    rows = [{k: v for k, v in zoo[i].metadata.items() if k not in ("row", "arch", "shard", "index")}
            for i in range(len(zoo))]
    sds = {f"{r['model_id']}@{r['epoch']}": zoo[i].state_dict() for i, r in enumerate(rows)}
    return rows, sds


def _shard_bytes(root: Path) -> list[tuple[dict, bytes]]:
    """Each shard's parsed header and raw tensor bytes. (The header's key order is not compared:
    safetensors writes ``__metadata__`` from a hash map whose order varies between processes.)"""
    out = []
    for shard in json.loads((root / "zoo.json").read_text())["shards"]:
        blob = (root / shard["file"]).read_bytes()
        n = int.from_bytes(blob[:8], "little")
        out.append((json.loads(blob[8:8 + n]), blob[8 + n:]))
    return out


def _assert_same(a: Path, b: Path) -> None:
    rows_a, sd_a = _content(a)
    rows_b, sd_b = _content(b)
    key = lambda r: (r["model_id"], r["epoch"])  # noqa: E731
    assert sorted(rows_a, key=key) == sorted(rows_b, key=key)
    assert sd_a.keys() == sd_b.keys()
    for k in sd_a:
        for name, t in sd_a[k].items():
            assert torch.equal(t, sd_b[k][name]), (k, name)


@pytest.mark.parametrize("recipe,args", [
    ("digits-cnn-gs.yaml", ["--num-models", "6", "--epochs", "1", "--models-per-chunk", "3"]),
    ("digits-cnn-wild.yaml", ["--num-models", "4", "--epochs", "1"]),
    ("mnist1d-mlp.yaml", ["--num-models", "4", "--epochs", "1"]),
    ("digits-siren.yaml", ["--num-models", "3", "--epochs", "6"]),
])
def test_recipe_generates_a_loadable_zoo(tmp_path: Path, recipe: str, args: list[str]) -> None:
    from wsl.zoo import load_zoo
    from wsl.zoo.data import load_dataset

    _generate(recipe, tmp_path / "z", *args)
    zoo = load_zoo(tmp_path / "z")
    assert len(zoo) > 0
    meta = zoo[len(zoo) - 1].metadata
    if recipe == "digits-siren.yaml":
        from wsl.zoo.data import coordinate_grid, digit_images
        from wsl.zoo.siren import psnr

        assert len(zoo.model_ids()) == 6 and meta["label"] in range(10)
        images, labels = digit_images(16)
        with torch.no_grad():
            pred = zoo[len(zoo) - 1].module()(coordinate_grid(16)).reshape(16, 16)
        mse = (pred - images[meta["hparams"]["image"]]).square().mean()
        assert abs(float(psnr(mse)) - meta["psnr"]) < 1e-3
        splits = {}
        for i in range(len(zoo)):
            m = zoo[i].metadata
            assert splits.setdefault(m["hparams"]["image"], m["split"]) == m["split"]
        return
    data = load_dataset("mnist1d" if recipe.startswith("mnist1d") else "digits")
    for i in (0, len(zoo) - 1):  # the first row (epoch 0) and the last (a final epoch)
        with torch.no_grad():
            acc = (zoo[i].module()(data.x_test).argmax(1) == data.y_test).float().mean().item()
        assert abs(acc - zoo[i].metadata["test_accuracy"]) < 1e-6
    assert meta["epoch"] == 1 and meta["hparams"]["optimizer"] in ("sgd", "adam", "rmsprop")
    assert {zoo[i].metadata["epoch"] for i in range(len(zoo))} == {0, 1}


def test_generation_is_deterministic_and_shards_merge_to_the_full_zoo(tmp_path: Path) -> None:
    common = ["--num-models", "6", "--epochs", "1", "--models-per-chunk", "2"]
    _generate("digits-cnn-gs.yaml", tmp_path / "full", *common)
    _generate("digits-cnn-gs.yaml", tmp_path / "again", *common, "--workers", "2")  # chunks in 2 processes
    _assert_same(tmp_path / "full", tmp_path / "again")
    assert _shard_bytes(tmp_path / "full") == _shard_bytes(tmp_path / "again")  # bit-identical tensor data
    _generate("digits-cnn-gs.yaml", tmp_path / "s0", *common, "--shard", "0/2")
    _generate("digits-cnn-gs.yaml", tmp_path / "s1", *common, "--shard", "1/2")
    ids0 = {r["model_id"] for r in _content(tmp_path / "s0")[0]}
    ids1 = {r["model_id"] for r in _content(tmp_path / "s1")[0]}
    assert ids0 and ids1 and not ids0 & ids1
    from wsl.zoo.merge import merge_zoos

    merge_zoos(tmp_path / "merged", [tmp_path / "s0", tmp_path / "s1"])
    _assert_same(tmp_path / "full", tmp_path / "merged")


def test_kill_and_resume_gives_the_uninterrupted_zoo(tmp_path: Path) -> None:
    args = ["--num-models", "12", "--epochs", "2", "--models-per-chunk", "2", "--threads", "1", "--workers", "1",
            "--quiet", "--device", "cpu"]
    cmd = [sys.executable, "-m", "wsl", "zoo", "generate", str(ZOOS / "digits-cnn-gs.yaml"), "-o",
           str(tmp_path / "killed"), *args]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    card = tmp_path / "killed" / "zoo.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if card.exists() and json.loads(card.read_text() or "{}").get("num_rows", 0) > 0:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    partial = json.loads(card.read_text())["num_rows"]
    assert proc.returncode == -signal.SIGKILL and 0 < partial < 12 * 3
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _generate("digits-cnn-gs.yaml", tmp_path / "clean", *args[:-3])
    rows, _ = _content(tmp_path / "killed")
    assert len({r["model_id"] for r in rows}) == 12 and len(rows) == 12 * 3
    _assert_same(tmp_path / "killed", tmp_path / "clean")


def test_recipe_errors_name_the_field(tmp_path: Path) -> None:
    import yaml

    from wsl.zoo.recipes import load_recipe, parse_recipe

    raw = yaml.safe_load((ZOOS / "digits-cnn-gs.yaml").read_text())
    bad = dict(raw, hparams=dict(raw["hparams"], optimizer=["sgd", "lion"]))
    with pytest.raises(ConfigError, match=r"hparams\.optimizer.*'lion'"):
        parse_recipe(bad, "r.yaml")
    bad = dict(raw, hparams=dict(raw["hparams"], dropout={"uniform": [0.0, 1.5]}))
    with pytest.raises(ConfigError, match=r"hparams\.dropout"):
        parse_recipe(bad, "r.yaml")
    bad = dict(raw, training=dict(raw["training"], epochs=0))
    with pytest.raises(ConfigError, match=r"training\.epochs"):
        parse_recipe(bad, "r.yaml")
    bad = dict(raw, training=dict(raw["training"], batchsize=3))
    with pytest.raises(ConfigError, match=r"training\.batchsize.*unknown"):
        parse_recipe(bad, "r.yaml")
    (tmp_path / "x.yaml").write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="x.yaml"):
        load_recipe(tmp_path / "x.yaml")
    from wsl.cli import main

    assert main(["zoo", "generate", str(ZOOS / "digits-cnn-gs.yaml"), "-o", str(tmp_path / "o"),
                 "--shard", "3/2"]) == 2
    assert main(["zoo", "generate", str(tmp_path / "missing.yaml"), "-o", str(tmp_path / "o")]) == 2


def test_hparams_depend_only_on_seed_and_index() -> None:
    from wsl.zoo.recipes import load_recipe, model_seeds, sample_hparams

    r = load_recipe(ZOOS / "digits-cnn-gs.yaml")
    a = [sample_hparams(r, i) for i in range(50)]
    assert a[7] == sample_hparams(r.with_overrides(num_models=8, models_per_chunk=3), 7)
    assert model_seeds(0, 7) == model_seeds(0, 7) != model_seeds(1, 7)
    lrs = np.array([h["lr"] for h in a])
    assert lrs.min() >= 5e-4 and lrs.max() <= 5e-2
    assert {h["optimizer"] for h in a} == {"sgd", "adam", "rmsprop"}
    assert isinstance(WslError("x"), Exception)


def test_siren_shared_init_starts_every_image_from_the_same_weights(tmp_path: Path) -> None:
    """``training.init: shared``: fit j of every image starts from one draw; fits differ; independent differs."""
    import yaml

    from wsl.zoo import load_zoo

    for init in ("shared", "independent"):
        raw = yaml.safe_load((ROOT / "zoos" / "digits-siren-shared.yaml").read_text())
        raw["training"].update(init=init, checkpoints=[0, 4])
        recipe = tmp_path / f"{init}.yaml"
        recipe.write_text(yaml.safe_dump(raw))
        _generate(str(recipe), tmp_path / init, "--num-models", "3", "--epochs", "4")
        zoo = load_zoo(tmp_path / init)
        start = {}
        for i in range(len(zoo)):
            m = zoo[i].metadata
            if m["epoch"] == 0:
                start[(m["hparams"]["image"], m["hparams"]["fit"])] = torch.cat(
                    [t.flatten() for t in zoo[i].state_dict().values()])
        assert len(start) == 6
        same_fit = torch.equal(start[(0, 0)], start[(1, 0)]) and torch.equal(start[(1, 1)], start[(2, 1)])
        assert same_fit == (init == "shared")
        assert not torch.equal(start[(0, 0)], start[(0, 1)])

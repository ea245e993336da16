"""wsl.subspace.functional: accuracy kept by projected models of a tiny real zoo, LOO, report and figures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from wsl.cli import main
from wsl.subspace.analyze import analyze
from wsl.subspace.functional import _RowEvaluator, accuracy_report, subspace_sweep
from wsl.subspace.sources import Source, open_source
from wsl.subspace.stacks import TensorStack
from wsl.zoo.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
N_MODELS = 10


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A private data cache (as tests/test_zoo_generate.py)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WSL_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Source, dict]:
    """A real digits CNN zoo (relu and tanh pooled: one tensor layout), trained one epoch, random seed."""
    root = tmp_path_factory.mktemp("acc") / "zoo"
    seed = int(np.random.default_rng().integers(1, 1000))
    text = (ROOT / "zoos" / "digits-cnn-gs.yaml").read_text()
    recipe = text.replace("seed: 0\nsplits", f"seed: {seed}\nsplits")
    assert recipe != text
    (root.parent / "r.yaml").write_text(recipe)
    assert main(["zoo", "generate", str(root.parent / "r.yaml"), "-o", str(root), "--quiet", "--device", "cpu",
                 "--workers", "1", "--num-models", str(N_MODELS), "--epochs", "1"]) == 0
    src = open_source(root)
    rep = accuracy_report(src, ks=(0, 1, 3, 100), loo_models=4, seed=seed, progress=False)
    return root, src, rep


def test_original_accuracy_is_the_zoos_own(tiny: tuple[Path, Source, dict]) -> None:
    _, src, rep = tiny
    assert rep["n_models"] == N_MODELS and rep["nonfinite_models_left_out"] == 0
    assert rep["ks"] == [0, 1, 3, N_MODELS - 1]
    stored = src.rows.column("test_accuracy")
    assert abs(rep["original_accuracy"] - float(np.mean(stored))) < 1e-6
    assert rep["architectures"] == sorted(set(src.rows.column("arch").tolist()))


def test_full_rank_keeps_every_models_accuracy_exactly(tiny: tuple[Path, Source, dict]) -> None:
    _, src, rep = tiny
    full = [m for m in rep["methods"] if m["method"] == "subspace" and m["param"] == N_MODELS - 1][0]
    assert full["mean_diff"] == 0.0 and full["within_1pt"] == 1.0 and full["ratio"] < 1
    stacked = src.rows.stacked()
    ev = _RowEvaluator(src.zoo, [str(r["arch"]) for r in src.rows.iter_metadata()], load_dataset("digits"))
    rows = np.arange(N_MODELS)
    (_, rec, _), = subspace_sweep(stacked, [N_MODELS - 1])
    assert torch.equal(ev(rec, rows), ev(stacked, rows))
    (_, rec0, _), = subspace_sweep(stacked, [0])
    assert not torch.equal(ev(rec0, rows), ev(stacked, rows))  # the check can fail


def test_k0_is_the_mean_network_evaluated_with_each_rows_architecture(tiny: tuple[Path, Source, dict]) -> None:
    _, src, rep = tiny
    data = load_dataset("digits")
    stacked = src.rows.stacked()
    mean = {k: v.mean(0) for k, v in stacked.items()}
    per_row = []
    for r in src.rows.iter_metadata():  # plain nn.Module forward, independent of the vectorized evaluator
        net = src.zoo.store.build(r["arch"])
        net.load_state_dict(mean)
        with torch.no_grad():
            per_row.append((net.eval()(data.x_test).argmax(1) == data.y_test).float().mean().item())
    k0 = [m for m in rep["methods"] if m["method"] == "mean only"][0]
    assert abs(k0["accuracy"] - float(np.mean(per_row))) < 1e-6
    assert k0["ratio"] == pytest.approx(N_MODELS)  # the mean alone: 1/N of the bytes


def test_loo_and_baselines(tiny: tuple[Path, Source, dict]) -> None:
    _, _, rep = tiny
    loo = rep["loo"]
    assert loo["models"] == 4 and len(loo["rows"]) == 4 and len(set(loo["rows"])) == 4
    assert set(loo["per_k"]) == {str(k) for k in rep["ks"]}
    for v in loo["per_k"].values():
        assert len(v["diffs"]) == 4 and {"mean_diff", "within_1pt", "in_sample_mean_diff"} <= set(v)
    assert loo["per_k"][str(N_MODELS - 1)]["in_sample_mean_diff"] == 0.0
    methods = {m["method"] for m in rep["methods"]}
    assert {"float16", "int8", "mean only", "subspace"} == methods
    f16 = [m for m in rep["methods"] if m["method"] == "float16"][0]
    assert f16["ratio"] == pytest.approx(2.0) and abs(f16["mean_diff"]) < 0.01


def test_cli_writes_the_plots_and_the_table(tiny: tuple[Path, Source, dict], tmp_path: Path) -> None:
    root, _, _ = tiny
    out = tmp_path / "rep"
    assert main(["subspace", "analyze", str(root), "-o", str(out), "--nulls", "none", "--align", "none",
                 "--accuracy", "--loo", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["accuracy"]["loo"]["models"] == 2 and report["settings"]["accuracy"] is True
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "loo.png").stat().st_size > 0
    assert "## accuracy kept vs compression" in (out / "summary.md").read_text()


def test_non_zoo_sources_are_skipped_with_the_reason() -> None:
    g = torch.Generator().manual_seed(int(torch.randint(0, 1000, ())))
    stack = TensorStack.from_state_dicts([{"w": torch.randn(3, 4, generator=g)} for _ in range(5)])
    rep = analyze(stack, nulls=(), aligned=False, split_half=False, modes=False, accuracy=True, progress=False)
    assert "zoo" in rep["accuracy"]["skipped"]

"""benchmarks/gpu_check.py: its CPU half (every step once on the CPU), its report, its agreement measure,
and its exit without a GPU."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    return _load()


@pytest.fixture(scope="module")
def cpu_rows(gpu_check: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """The CPU half, once: ``run("cpu", quick=True)`` on one thread (as `wsl zoo generate` trains)."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WSL_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
        torch.set_num_threads(1)
        try:
            return gpu_check.run("cpu", quick=True)
        finally:
            torch.set_num_threads(threads)


def _finite(t: torch.Tensor) -> bool:
    return t.numel() > 0 and bool(torch.isfinite(t.double()).all())


def test_cpu_half_runs_every_step(gpu_check: ModuleType, cpu_rows: list[dict[str, Any]]) -> None:
    from wsl.predict.shipped import models_dir

    rows = {r["step"]: r for r in cpu_rows}
    assert list(rows) == [name for name, _, _ in gpu_check.STEPS]
    assert all(r["cpu_s"] > 0 and r["device_s"] is None and r["agreement"] is None for r in cpu_rows)
    assert set(rows["trace"]["ref"]) == {"small_cnn", "gpt2"} and all(rows["trace"]["ref"].values())
    g = rows["graph"]["ref"]
    assert g["edge_index"].shape == (2, g["edge_attr"].shape[0]) and _finite(g["x"]) and _finite(g["edge_attr"])
    acc = rows["zoo"]["ref"]["test_accuracy"]
    assert acc.shape == (8,) and bool(((acc >= 0) & (acc <= 1)).all())
    for kind in ("np", "hnp", "nggnn"):
        ref = rows[f"train-{kind}"]["ref"]
        assert _finite(ref["loss"]) and _finite(ref["parameters"]) and ref["prediction"].shape == (8,), kind
    if models_dir() is not None:
        assert rows["predict"]["ref"] and all(_finite(t) for t in rows["predict"]["ref"].values())


def test_report_prints_every_step(gpu_check: ModuleType, cpu_rows: list[dict[str, Any]],
                                  monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(gpu_check, "run", lambda device, quick: cpu_rows)
    assert gpu_check.main(["--device", "cpu", "--quick"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "CPU half" in lines[0] and lines[1].split()[:3] == ["step", "cpu", "s"]
    for line, row in zip(lines[2:], cpu_rows, strict=True):
        name, cpu_s, *rest = line.split()
        assert name == row["step"] and float(cpu_s) == pytest.approx(row["cpu_s"], abs=1e-3) and rest == ["-"] * 3


def test_agreement_measures_the_largest_relative_difference(gpu_check: ModuleType,
                                                             cpu_rows: list[dict[str, Any]]) -> None:
    agreement = gpu_check.agreement
    ref = {r["step"]: r["ref"] for r in cpu_rows}["train-np"]
    assert agreement(ref, ref) == 0.0
    moved = {**ref, "parameters": ref["parameters"].clone()}
    scale = max(float(t.abs().max()) for t in ref.values())
    moved["parameters"][3] += 1e-3 * scale
    assert agreement(ref, moved) == pytest.approx(1e-3, rel=1e-4)  # float32 rounding of the added step
    g = {r["step"]: r["ref"] for r in cpu_rows}["graph"]
    broken = {**g, "edge_index": g["edge_index"].flip(0)}
    assert agreement(g, broken) == math.inf  # integer results must match exactly
    assert agreement({"spec": "a"}, {"spec": "b"}) == math.inf and agreement({"spec": "a"}, {}) == math.inf


def test_without_a_gpu_it_says_so_and_exits_0(gpu_check: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "run", lambda device, quick: pytest.fail("ran without a device"))
    assert gpu_check.main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out

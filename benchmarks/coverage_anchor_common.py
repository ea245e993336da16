"""What the anchor comparison's two processes share: building a family exactly as ``coverage.py`` does.

Both the parent (``coverage_anchor.py``, which runs ``wsl``) and the child (``coverage_anchor_tp.py``,
which runs Torch-Pruning) call :func:`prime` first and :func:`seed_for` before each family, so the example
inputs drawn at import time (the test modules' ``X``, ``coverage_families.IMG/IDS``) and inside ``make()``
are the same tensors in both processes. Weights are then randomised by ``coverage._randomize`` (seeded,
float64), so both tools see the same network.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT), str(Path(__file__).resolve().parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

_PRIMED = False


def prime() -> None:
    """Import the modules that draw example inputs at import time, in a fixed order, from seed 0."""
    global _PRIMED
    if _PRIMED:
        return
    torch.manual_seed(0)
    importlib.import_module("coverage_families")
    for name in ("test_space", "test_space_grouped", "test_space_concat", "test_space_channels", "test_space_lora",
                 "test_space_timm"):
        importlib.import_module(f"tests.{name}")
    _PRIMED = True


def families() -> list[Any]:
    prime()
    return importlib.import_module("coverage_families").FAMILIES


def family(name: str) -> Any:
    for f in families():
        if f.name == name:
            return f
    raise KeyError(f"no coverage family named {name!r}")


def seed_for(f: Any) -> None:
    """The global seed set right before ``f.make()`` (its position in the family list)."""
    torch.manual_seed(1000 + [g.name for g in families()].index(f.name))


def build(f: Any) -> tuple[nn.Module, Any]:
    """The family's module, randomised in float64 exactly as ``coverage.run`` does, and its example input."""
    cov = importlib.import_module("coverage")
    seed_for(f)
    module, x, _ = f.make()
    return cov._randomize(module.double()), cov._double(x)


def first_tensor(out: Any) -> torch.Tensor:
    return importlib.import_module("coverage")._first_tensor(out)


def all_tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor in a (nested) output: TP traces its graph back from these (``output_transform``)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in all_tensors(item)]
    return []


def call(module: nn.Module, x: Any) -> torch.Tensor:
    return importlib.import_module("coverage")._call(module, x)


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 150 else text[:147] + "..."


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    if out.shape != ref.shape:
        return float("inf")
    return float((out - ref).abs().max()) / max(float(ref.abs().max()), 1e-30)


def permutes_output(out: torch.Tensor, ref: torch.Tensor, tol: float = 1e-9) -> bool:
    """True if ``out`` is ``ref`` with the entries of one axis (the last, or 1 for channels-first) permuted."""
    if out.shape != ref.shape or out.dim() < 2:
        return False
    scale = max(float(ref.abs().max()), 1e-30)
    for axis in {out.dim() - 1, 1}:
        a = out.movedim(axis, 0).reshape(out.shape[axis], -1)
        b = ref.movedim(axis, 0).reshape(ref.shape[axis], -1)
        match = torch.cdist(a, b, p=float("inf")) < tol * scale
        if match.any(1).all() and match.any(0).all():
            return True
    return False

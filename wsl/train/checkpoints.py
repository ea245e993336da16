"""Training checkpoints of a run: ``<run>/checkpoints/<name>/`` (``last``, ``best``).

Each holds ``model.safetensors`` (the weights), ``state.pt`` (optimizer,
scheduler, grad-scaler and trainer state plus the torch RNG states:
``torch.save`` of plain tensors and numbers, read back with
``weights_only=True``) and ``config.json``. A checkpoint is written to a
temporary directory and swapped in with renames, so an interrupted save
leaves the previous one intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from wsl.errors import WslError

__all__ = ["load_checkpoint", "save_checkpoint"]


def _rng_state() -> dict[str, Any]:
    st: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def save_checkpoint(root: Path, name: str, model: nn.Module, opt: Any, sched: Any, scaler: Any,
                    trainer: dict[str, Any], config: dict[str, Any]) -> None:
    """Write ``root/name`` atomically (see module docstring)."""
    from wsl.io import atomic_open, atomic_save_safetensors

    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_save_safetensors(dict(model.state_dict()), tmp / "model.safetensors")
    full = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
            "trainer": trainer, "rng": _rng_state()}
    with atomic_open(tmp / "state.pt", "wb") as fh:
        torch.save(full, fh)
    with atomic_open(tmp / "config.json", "w", encoding="utf-8") as fh:
        json.dump(config, fh, indent=1)
    final, old = root / name, root / f".{name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(d: Path, model: nn.Module, opt: Any, sched: Any, scaler: Any, device: torch.device,
                    config: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler, scaler and RNG states from ``d``; return the trainer state.

    A config that differs from the saved one (outside ``train``) is logged, not refused.
    """
    from wsl.io import load_safetensors

    if not (d / "state.pt").is_file() or not (d / "model.safetensors").is_file():
        raise WslError(f"{d}: no checkpoint to resume from (run without --resume first)")
    saved = json.loads((d / "config.json").read_text(encoding="utf-8"))
    if {k: v for k, v in saved.items() if k != "train"} != {k: v for k, v in config.items() if k != "train"}:
        log(f"warning: {d}/config.json differs from the current config; resuming anyway")
    model.load_state_dict(load_safetensors(d / "model.safetensors", device=str(device)))
    full = torch.load(d / "state.pt", map_location=device, weights_only=True)
    opt.load_state_dict(full["optimizer"])
    sched.load_state_dict(full["scheduler"])
    scaler.load_state_dict(full["scaler"])
    torch.set_rng_state(full["rng"]["torch"].cpu())
    if "cuda" in full["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in full["rng"]["cuda"]])
    return dict(full["trainer"])

"""Helpers shared by CLI subcommands: loading models, parsing input shapes, printing JSON."""

from __future__ import annotations

import json
import sys
from typing import Any

import torch
from torch import nn

from wsl.errors import WslError


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KB"`` (binary units)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``"3,32,32"`` or ``"3x32x32"`` -> ``(3, 32, 32)`` (no batch dim)."""
    if text is None:
        return None
    try:
        dims = tuple(int(t) for t in text.replace("x", ",").split(",") if t.strip())
    except ValueError:
        raise WslError(f"--input-shape {text!r}: expected integers like 3,32,32") from None
    if not dims or any(d <= 0 for d in dims):
        raise WslError(f"--input-shape {text!r}: expected positive integers like 3,32,32")
    return dims


def example_from_shape(module: nn.Module, shape: tuple[int, ...] | None, dtype: str | None = None) -> Any:
    if shape is None:
        return None
    if dtype and "int" in dtype:
        vocab = next((m.num_embeddings for m in module.modules() if isinstance(m, nn.Embedding)), 2)
        return torch.randint(0, vocab, (2, *shape))
    return torch.randn(2, *shape)


def load_for_cli(path: str | None, arch: str | None, input_shape: str | None = None,
                 input_dtype: str | None = None) -> tuple[nn.Module, dict[str, torch.Tensor] | None, Any]:
    """(module, state_dict or None, WeightSpace) for ``wsl inspect``-like commands."""
    from wsl.io import load_model, local_path, resolve_arch
    from wsl.space import WeightSpace

    if path is None:
        if arch is None:
            raise WslError("give a checkpoint PATH, an --arch, or both")
        module = resolve_arch(arch)
        sd = None
    else:
        module, sd = load_model(local_path(path), arch)
    example = example_from_shape(module, parse_shape(input_shape), input_dtype)
    return module, sd, WeightSpace.from_module(module, example)


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=None, separators=(",", ":"))
    sys.stdout.write("\n")


def add_model_args(p: Any) -> None:
    p.add_argument("--arch", metavar="REF", help="architecture: registered name (resnet18), "
                   "package.module:factory, file.py:factory, or a JSON description/file")
    p.add_argument("--input-shape", metavar="C,H,W", help="example input shape without batch dim, "
                   "when it cannot be inferred (e.g. 3,224,224)")
    p.add_argument("--input-dtype", default=None, help="'int64' for token-id inputs")

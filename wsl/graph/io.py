"""Saving and loading a :class:`ParameterGraph` without pickling code.

``.safetensors`` files hold the graph's tensors, with its string attributes
in the header metadata; ``.pt`` files hold a plain ``{name: tensor | str}``
dict, read back with ``torch.load(weights_only=True)``. Writes are atomic.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from wsl.errors import CheckpointError
from wsl.graph.data import ParameterGraph
from wsl.io import atomic_save_safetensors, atomic_write, load_safetensors, read_safetensors_header

_FORMAT = "wsl.graph/1"


def save_graph(graph: ParameterGraph, path: str | os.PathLike[str]) -> None:
    """Write ``graph`` to ``.pt`` or ``.safetensors`` (chosen by suffix)."""
    p = Path(path)
    tensors = {k: v for k, v in graph.items() if isinstance(v, torch.Tensor)}
    strings = {k: v for k, v in graph.items() if isinstance(v, str)}
    if p.suffix == ".safetensors":
        atomic_save_safetensors(tensors, p, {"format": _FORMAT, **{f"str:{k}": v for k, v in strings.items()}})
    elif p.suffix in (".pt", ".pth"):
        with atomic_write(p) as tmp:
            torch.save({"format": _FORMAT, **{k: v.contiguous() for k, v in tensors.items()}, **strings}, tmp)
    else:
        raise CheckpointError(f"{p}: graph files must end in .pt or .safetensors")


def load_graph(path: str | os.PathLike[str]) -> ParameterGraph:
    """Read a graph written by :func:`save_graph`."""
    p = Path(path)
    if p.suffix == ".safetensors":
        meta = read_safetensors_header(p).metadata or {}
        if meta.get("format") != _FORMAT:
            raise CheckpointError(f"{p}: not a wsl parameter graph (format {meta.get('format')!r})")
        data: dict[str, object] = dict(load_safetensors(p))
        data.update({k[4:]: v for k, v in meta.items() if k.startswith("str:")})
    else:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{p}: cannot read graph: {e}") from e
        if not isinstance(obj, dict) or obj.get("format") != _FORMAT:
            raise CheckpointError(f"{p}: not a wsl parameter graph")
        data = {k: v for k, v in obj.items() if k != "format"}
    return ParameterGraph(**data)

"""Stacks: N networks of one architecture, read one tensor (or one block of a tensor) at a time.

Every analysis in :mod:`wsl.subspace` reads its networks through a
:class:`Stack`. A stack knows the tensor names and shapes shared by its N
models and yields, for one tensor, blocks of its flattened entries as an
``(N, b)`` matrix (rows: models, columns: entries ``lo:hi`` of the flattened
tensor). Nothing ever needs the whole ``N x P`` matrix of a large tensor, so
memory stays ``O(N * block)`` however large the models are.

* :class:`TensorStack` -- tensors already in memory (``name -> (N, *shape)``),
  e.g. ``Zoo.stacked()``;
* :class:`FileStack` -- a list of safetensors checkpoints; a block's rows
  are one contiguous byte range of each file, read straight into the
  ``(N, b)`` block with ``preadv`` (no memory map, so pages already read are
  not kept in the process's resident memory, and no per-model copies);
* :class:`ShuffledStack` -- the *shuffled null*: each model's entries of each
  tensor permuted at random (within blocks of ``block`` entries, seeded per
  model, tensor and block), which destroys the correspondence between models
  while keeping every model's value distribution exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import torch

from wsl.errors import CheckpointError, SpaceMismatchError, WslError

__all__ = ["BLOCK", "FileStack", "ShuffledStack", "Stack", "TensorStack", "layer_of"]

BLOCK = 1 << 20
"""Default number of entries per block (columns of one ``(N, b)`` read)."""


def layer_of(name: str) -> str:
    """The module a tensor belongs to: its name without the last component (``"0.weight"`` -> ``"0"``)."""
    return name.rsplit(".", 1)[0] if "." in name else name


class Stack:
    """N models' tensors of one architecture (see the module docstring)."""

    names: list[str]
    shapes: dict[str, tuple[int, ...]]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def numel(self, name: str) -> int:
        return math.prod(self.shapes[name])

    def rows_per_block(self, name: str, block: int) -> int:
        """How many rows (first-axis slices) of tensor ``name`` make one block of at most ``block`` entries."""
        shape = self.shapes[name]
        row = math.prod(shape[1:]) if len(shape) > 1 else 1
        return max(1, block // max(row, 1))

    def row_ranges(self, name: str, block: int = BLOCK) -> list[tuple[int, int]]:
        """The first-axis ranges ``(r0, r1)`` that make the blocks of tensor ``name`` (one range for a scalar)."""
        shape = self.shapes[name]
        if not shape:
            return [(0, 1)]
        rows = self.rows_per_block(name, block)
        return [(r0, min(r0 + rows, shape[0])) for r0 in range(0, max(shape[0], 1), rows)]

    def read(self, name: str, r0: int, r1: int, models: list[int], dtype: torch.dtype) -> torch.Tensor:
        """Rows ``r0:r1`` of tensor ``name`` of ``models``, flattened to ``(len(models), b)``."""
        raise NotImplementedError

    def blocks(self, name: str, block: int = BLOCK, models: Sequence[int] | None = None,
               dtype: torch.dtype = torch.float32) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(lo, X)`` with ``X`` the ``(len(models), b)`` entries ``lo:lo+b`` of the flattened tensor."""
        idx = self._models(models)
        per_row = math.prod(self.shapes[name][1:]) if len(self.shapes[name]) > 1 else 1
        for r0, r1 in self.row_ranges(name, block):
            yield r0 * per_row, self.read(name, r0, r1, idx, dtype)

    def matrix(self, name: str, models: Sequence[int] | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole ``(N, P)`` matrix of one tensor (small tensors only)."""
        parts = [x for _, x in self.blocks(name, block=max(self.numel(name), 1), models=models, dtype=dtype)]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def model_tensor(self, i: int, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Model ``i``'s tensor ``name`` in its own shape."""
        return self.matrix(name, models=[i], dtype=dtype)[0].reshape(self.shapes[name])

    def state_dict(self, i: int) -> dict[str, torch.Tensor]:
        """Model ``i``'s floating tensors (float32)."""
        return {n: self.model_tensor(i, n) for n in self.names}

    def _models(self, models: Sequence[int] | None) -> list[int]:
        if models is None:
            return list(range(len(self)))
        out = [int(m) for m in models]
        bad = [m for m in out if not 0 <= m < len(self)]
        if bad:
            raise WslError(f"model index {bad[0]} out of range for a stack of {len(self)} models")
        return out


class TensorStack(Stack):
    """Stacked tensors in memory: ``{name: (N, *shape)}`` (non-floating tensors are left out)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], ids: Sequence[str] | None = None) -> None:
        floats = {k: v for k, v in tensors.items() if v.is_floating_point()}
        if not floats:
            raise WslError("a stack needs at least one floating-point tensor")
        sizes = {int(v.shape[0]) for v in floats.values()}
        if len(sizes) != 1:
            raise SpaceMismatchError(f"stacked tensors disagree on the number of models: {sorted(sizes)}")
        n = sizes.pop()
        self.tensors = dict(floats)
        self.names = list(floats)
        self.shapes = {k: tuple(int(s) for s in v.shape[1:]) for k, v in floats.items()}
        self.ids = [str(i) for i in (ids if ids is not None else range(n))]
        if len(self.ids) != n:
            raise WslError(f"{len(self.ids)} ids for {n} models")

    @classmethod
    def from_state_dicts(cls, state_dicts: Sequence[Mapping[str, torch.Tensor]],
                         ids: Sequence[str] | None = None) -> "TensorStack":
        """Stack state_dicts of one architecture (same names and shapes, else :class:`SpaceMismatchError`)."""
        if not state_dicts:
            raise WslError("no models to stack")
        ref = state_dicts[0]
        for k, sd in enumerate(state_dicts[1:], 1):
            if list(sd) != list(ref):
                diff = sorted(set(sd) ^ set(ref)) or ["(order)"]
                raise SpaceMismatchError(f"model {k} has different tensor names than model 0: first difference "
                                         f"{diff[0]!r}")
            for name, t in sd.items():
                if tuple(t.shape) != tuple(ref[name].shape):
                    raise SpaceMismatchError(f"model {k}: tensor {name!r} has shape {tuple(t.shape)}, model 0 has "
                                             f"{tuple(ref[name].shape)}")
        return cls({n: torch.stack([sd[n] for sd in state_dicts]) for n in ref}, ids)

    def read(self, name: str, r0: int, r1: int, models: list[int], dtype: torch.dtype) -> torch.Tensor:
        t = self.tensors[name]
        part = t.reshape(t.shape[0], 1) if t.ndim == 1 else t[:, r0:r1]
        if len(models) != t.shape[0] or models != list(range(t.shape[0])):
            part = part[torch.tensor(models, dtype=torch.long, device=t.device)]
        return part.reshape(len(models), -1).to(dtype)

    def subset(self, models: Sequence[int]) -> "TensorStack":
        idx = torch.tensor(self._models(models), dtype=torch.long)
        return TensorStack({k: v[idx.to(v.device)] for k, v in self.tensors.items()}, [self.ids[i] for i in idx])


class FileStack(Stack):
    """Safetensors checkpoints of one architecture, read block by block from memory-mapped files."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], device: torch.device | str = "cpu") -> None:
        from safetensors import safe_open

        if not paths:
            raise WslError("no checkpoints given")
        self.paths = [Path(p) for p in paths]
        self.device = torch.device(device)
        self._handles = []
        for p in self.paths:
            try:
                self._handles.append(safe_open(str(p), framework="pt"))
            except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
                raise CheckpointError(f"{p}: not a readable safetensors file ({exc})") from None
        ref = self._handles[0]
        names = [k for k in ref.keys() if ref.get_slice(k).get_dtype() in _FLOAT_DTYPES]
        if not names:
            raise CheckpointError(f"{self.paths[0]}: no floating-point tensors")
        self.names = names
        self.shapes = {k: tuple(int(s) for s in ref.get_slice(k).get_shape()) for k in names}
        for p, h in zip(self.paths[1:], self._handles[1:]):
            keys = set(h.keys())
            missing = [k for k in names if k not in keys]
            if missing:
                raise SpaceMismatchError(f"{p}: no tensor {missing[0]!r} (present in {self.paths[0]})")
            for k in names:
                shape = tuple(int(s) for s in h.get_slice(k).get_shape())
                if shape != self.shapes[k]:
                    raise SpaceMismatchError(f"{p}: tensor {k!r} has shape {shape}, {self.paths[0]} has "
                                             f"{self.shapes[k]}")
        self.ids = [p.stem if p.name != "model.safetensors" else p.parent.name for p in self.paths]
        self._layout: list[dict[str, tuple[str, int]] | None] = [None] * len(self.paths)

    def read(self, name: str, r0: int, r1: int, models: list[int], dtype: torch.dtype) -> torch.Tensor:
        shape = self.shapes[name]
        if not shape:
            return torch.stack([self._handles[i].get_tensor(name).reshape(1) for i in models]).to(self.device, dtype)
        if not _DIRECT:  # big-endian host or no preadv: memory-mapped slices
            parts = [self._handles[i].get_slice(name)[r0:r1].reshape(1, -1).to(dtype) for i in models]
            return torch.cat(parts).to(self.device)
        per_row = math.prod(shape[1:])
        out = torch.empty((len(models), (r1 - r0) * per_row), dtype=dtype)
        tmp = None
        for r, i in enumerate(models):
            if self._layout[i] is None:
                self._layout[i] = _data_offsets(self.paths[i])
            code, begin = self._layout[i][name]
            src = _TORCH_DTYPES[code]
            offset = begin + r0 * per_row * src.itemsize
            if src == dtype:
                _pread_into(self.paths[i], out[r], offset)
            else:  # another dtype on disk (e.g. float16): read it, then convert
                tmp = torch.empty(out.shape[1], dtype=src) if tmp is None or tmp.dtype != src else tmp
                _pread_into(self.paths[i], tmp, offset)
                out[r].copy_(tmp)
        return out.to(self.device)


class ShuffledStack(Stack):
    """The shuffled null of ``base``: each model's entries permuted independently (see the module docstring)."""

    def __init__(self, base: Stack, seed: int = 0) -> None:
        self.base = base
        self.seed = int(seed)
        self.names, self.shapes, self.ids = base.names, base.shapes, base.ids

    def _perm(self, model: int, name: str, r0: int, size: int) -> torch.Tensor:
        key = f"{self.seed}:{model}:{name}:{r0}:{size}".encode()
        g = torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1)
        # int32 draws the same permutation as int64 from the same generator, about twice as fast
        return torch.randperm(size, generator=g, dtype=torch.int32 if size < 2 ** 31 else torch.int64)

    def read(self, name: str, r0: int, r1: int, models: list[int], dtype: torch.dtype) -> torch.Tensor:
        x = self.base.read(name, r0, r1, models, dtype)
        out = torch.empty_like(x)
        for r, m in enumerate(models):  # index_select into the row: ~4x faster than out[r] = x[r, perm]
            torch.index_select(x[r], 0, self._perm(m, name, r0, x.shape[1]).to(x.device), out=out[r])
        return out


_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
_TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_DIRECT = sys.byteorder == "little" and hasattr(os, "preadv")
"""Read blocks with ``preadv`` (safetensors data is little-endian)."""


def _data_offsets(path: Path) -> dict[str, tuple[str, int]]:
    """``name -> (dtype code, absolute byte offset of its data)`` from a safetensors header (8-byte length + JSON)."""
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    return {k: (v["dtype"], 8 + size + int(v["data_offsets"][0])) for k, v in header.items() if k != "__metadata__"}


def _pread_into(path: Path, t: torch.Tensor, offset: int) -> None:
    """Fill the contiguous tensor ``t`` with the bytes of ``path`` from ``offset`` on."""
    buf = memoryview(t.view(torch.uint8).numpy()).cast("B")
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < len(buf):
            got = os.preadv(fd, [buf[done:]], offset + done)
            if got <= 0:
                raise CheckpointError(f"{path}: file ends inside a tensor's data (offset {offset + done})")
            done += got
    finally:
        os.close(fd)

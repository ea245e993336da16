"""Validate ``.safetensors`` files before the safetensors library sees them.

The safetensors format is an 8-byte little-endian header length ``N``, ``N``
bytes of UTF-8 JSON, then a flat data buffer. The header maps tensor names to
``{"dtype", "shape", "data_offsets": [start, end]}`` (offsets relative to the
data buffer) plus an optional ``"__metadata__"`` str->str map.

:func:`inspect_safetensors` checks every structural property with Python ints
(so huge shapes cannot overflow) and raises :class:`~wsl.errors.CheckpointError`
naming the file and the problem. :func:`load_safetensors` runs that check and
only then calls :func:`safetensors.torch.load_file`, wrapping any library
error, so arbitrary bytes never produce anything but tensors or a ``WslError``.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wsl.errors import CheckpointError

__all__ = [
    "DEFAULT_MAX_HEADER_BYTES",
    "NOT_SAFETENSORS",
    "SAFETENSORS_DTYPES",
    "SafetensorsHeader",
    "TensorInfo",
    "inspect_safetensors",
    "load_safetensors",
    "read_safetensors_header",
]

DEFAULT_MAX_HEADER_BYTES = 64 * 1024 * 1024
_INT64_MAX = 2**63 - 1

#: (dtype string, torch dtype attribute name, itemsize in bytes)
_DTYPE_TABLE: tuple[tuple[str, str, int], ...] = (
    ("BOOL", "bool", 1),
    ("U8", "uint8", 1),
    ("I8", "int8", 1),
    ("F8_E4M3", "float8_e4m3fn", 1),
    ("F8_E5M2", "float8_e5m2", 1),
    ("I16", "int16", 2),
    ("U16", "uint16", 2),
    ("F16", "float16", 2),
    ("BF16", "bfloat16", 2),
    ("I32", "int32", 4),
    ("U32", "uint32", 4),
    ("F32", "float32", 4),
    ("I64", "int64", 8),
    ("U64", "uint64", 8),
    ("F64", "float64", 8),
    ("C64", "complex64", 8),
)

#: dtype string -> (torch dtype, itemsize), restricted to dtypes this torch has.
SAFETENSORS_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    name: (getattr(torch, attr), size)
    for name, attr, size in _DTYPE_TABLE
    if isinstance(getattr(torch, attr, None), torch.dtype)
}

TensorInfo = tuple[str, tuple[int, ...], tuple[int, int]]

NOT_SAFETENSORS = ("not a safetensors file (no JSON header: byte 8 does not start with '{'); pass a file "
                   "written by safetensors, or name a torch.save checkpoint .pt")


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated safetensors header."""

    path: str
    header_bytes: int
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)


def _fail(path: str, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: {what}")


def _reject_constant(token: str) -> Any:
    raise ValueError(f"non-standard JSON constant {token}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_entry(path: str, name: str, entry: Any, data_size: int) -> TensorInfo:
    where = f"tensor {name!r}"
    if not isinstance(entry, dict):
        raise _fail(path, f"{where}: header entry is not a JSON object")
    extra = set(entry) - {"dtype", "shape", "data_offsets"}
    if extra:
        raise _fail(path, f"{where}: unknown header fields {sorted(extra)}")
    dtype = entry.get("dtype")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise _fail(
            path, f"{where}: unknown dtype {dtype!r} (known: {', '.join(SAFETENSORS_DTYPES)})"
        )
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        type(d) is int and 0 <= d <= _INT64_MAX for d in shape
    ):
        raise _fail(path, f"{where}: shape must be a list of non-negative integers, got {shape!r}")
    if len(shape) > 64:
        raise _fail(path, f"{where}: shape has {len(shape)} dimensions (at most 64 allowed)")
    offsets = entry.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int for o in offsets)
    ):
        raise _fail(path, f"{where}: data_offsets must be [start, end] integers, got {offsets!r}")
    start, end = offsets
    if start < 0 or start > end:
        raise _fail(path, f"{where}: data_offsets [{start}, {end}] need 0 <= start <= end")
    if end > data_size:
        raise _fail(
            path, f"{where}: data_offsets end {end} exceeds the data buffer ({data_size} bytes)"
        )
    numel = 1
    nonzero = 1
    for d in shape:
        numel *= d
        nonzero *= max(d, 1)
    if nonzero > _INT64_MAX:
        raise _fail(path, f"{where}: shape {shape} is too large")
    itemsize = SAFETENSORS_DTYPES[dtype][1]
    if end - start != numel * itemsize:
        raise _fail(
            path,
            f"{where}: shape {shape} of {dtype} needs {numel * itemsize} bytes "
            f"but data_offsets cover {end - start}",
        )
    return dtype, tuple(shape), (start, end)


def read_safetensors_header(
    path: str | os.PathLike[str], max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file (tensors and metadata)."""
    p = str(path)
    try:
        with open(p, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                raise _fail(p, f"file is {size} bytes; a safetensors file has at least 8")
            (n,) = struct.unpack("<Q", fh.read(8))
            if size == 8 or fh.read(1) != b"{":
                raise _fail(p, NOT_SAFETENSORS)
            fh.seek(8)
            if n > max_header_bytes:
                raise _fail(p, f"header length {n} exceeds the limit of {max_header_bytes} bytes")
            if n > size - 8:
                raise _fail(p, f"header length {n} exceeds the file size minus 8 ({size - 8}): the file is "
                            "truncated, or not a safetensors file")
            raw = fh.read(n)
    except OSError as exc:
        raise _fail(p, f"cannot read file: {exc.strerror or exc}") from exc
    if len(raw) != n:
        raise _fail(p, "file changed while reading the header")
    if not raw.startswith(b"{"):
        raise _fail(p, "header does not start with '{' (not a safetensors file?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(p, f"header is not valid UTF-8 (byte {exc.start})") from exc
    try:
        header = json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as exc:
        raise _fail(
            p, f"header is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise _fail(p, f"header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise _fail(p, "header is not a JSON object")

    data_size = size - 8 - n
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _fail(p, "__metadata__ must be a JSON object mapping strings to strings")
    tensors = {name: _parse_entry(p, name, entry, data_size) for name, entry in header.items()}

    # Tensors must tile the data buffer: no overlap, no gap, nothing left over.
    ordered = sorted(tensors.items(), key=lambda kv: kv[1][2])
    cursor = 0
    for name, (_, _, (start, end)) in ordered:
        if start < cursor:
            raise _fail(p, f"tensor {name!r}: data_offsets [{start}, {end}] overlap another tensor")
        if start > cursor:
            raise _fail(p, f"tensor {name!r}: gap in the data buffer before offset {start}")
        cursor = end
    if cursor != data_size:
        raise _fail(p, f"data buffer is {data_size} bytes but tensors cover {cursor}")
    return SafetensorsHeader(path=p, header_bytes=n, tensors=tensors, metadata=metadata)


def inspect_safetensors(
    path: str | os.PathLike[str], max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> dict[str, TensorInfo]:
    """Validate a safetensors file; return ``{name: (dtype, shape, (start, end))}``.

    Raises :class:`CheckpointError` ``"<path>: <what>"`` on any violation.
    """
    return read_safetensors_header(path, max_header_bytes).tensors


def load_safetensors(
    path: str | os.PathLike[str],
    device: str = "cpu",
    *,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> dict[str, torch.Tensor]:
    """Validate then load a safetensors file as ``{name: tensor}``."""
    p = str(path)
    if not Path(p).is_file():
        raise _fail(p, "no such file" if not Path(p).exists() else "not a regular file")
    header = read_safetensors_header(p, max_header_bytes)
    try:
        from safetensors.torch import load_file

        tensors = load_file(p, device=device)
    except Exception as exc:  # the library raises many unrelated types
        raise _fail(p, f"safetensors could not load the file: {type(exc).__name__}: {exc}") from exc
    if set(tensors) != set(header.tensors):
        raise _fail(p, "safetensors returned different tensors than the header lists")
    for name, tensor in tensors.items():
        dtype, shape, _ = header.tensors[name]
        if tuple(tensor.shape) != shape or tensor.dtype != SAFETENSORS_DTYPES[dtype][0]:
            raise _fail(p, f"tensor {name!r}: loaded shape/dtype differ from the header")
        is_bool = tensor.dtype == torch.bool and tensor.numel() > 0
        if is_bool and bool((tensor.view(torch.uint8) > 1).any()):
            raise _fail(p, f"tensor {name!r}: BOOL data holds bytes other than 0 and 1")
    return tensors

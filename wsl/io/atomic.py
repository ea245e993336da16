"""Atomic file writes: write to a temp file in the same directory, fsync, rename.

A reader never sees a half-written file: either the old file (or none) or the
complete new one. On any exception the temp file is removed and the target is
left untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from wsl.errors import CheckpointError

__all__ = ["atomic_open", "atomic_save_safetensors", "atomic_write", "prepare_tensors_for_save"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def _fsync_dir(directory: Path) -> None:
    """Best effort: persist the rename itself (not supported on every OS/filesystem)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temp path next to ``path``; on success fsync it and ``os.replace`` it.

    The body writes the temp path (by any means). If the body raises, the temp
    file is deleted and ``path`` is untouched.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    if not directory.is_dir():
        raise CheckpointError(f"{target}: directory {directory} does not exist")
    if target.is_dir():
        raise CheckpointError(f"{target}: is a directory; cannot write a file there")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise CheckpointError(f"{target}: cannot create a temp file: {exc}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise CheckpointError(f"{target}: temp file {tmp} vanished before it was renamed")
        try:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            mode = 0o666 & ~_UMASK
            with contextlib.suppress(OSError):
                mode = os.stat(target).st_mode & 0o7777
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except OSError as exc:
            raise CheckpointError(f"{target}: cannot finish writing: {exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(directory)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Like ``open(path, mode)`` for writing, but atomic (see :func:`atomic_write`)."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open only supports write modes, got {mode!r}")
    with atomic_write(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh
        fh.flush()


def prepare_tensors_for_save(
    tensors: Mapping[str, Any], where: str = ""
) -> dict[str, torch.Tensor]:
    """Detach, move to CPU, make contiguous and un-share tensors for serialization."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{where}: tensor name {name!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{where}: entry {name!r} is a {type(value).__name__}, not a torch.Tensor"
            )
        if value.device.type == "meta":
            raise CheckpointError(f"{where}: tensor {name!r} is on the meta device (no data)")
        if value.layout != torch.strided:
            raise CheckpointError(f"{where}: tensor {name!r} has layout {value.layout}; densify it")
        t = value.detach().to("cpu").contiguous()
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        shared = ptr in seen and storage.nbytes() > 0
        partial = t.data_ptr() != ptr or t.nbytes != storage.nbytes()
        if shared or partial:
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        if t.untyped_storage().nbytes() > 0:
            seen.add(ptr)
        out[name] = t
    return out


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save ``tensors`` as a safetensors file atomically (contiguous CPU copies)."""
    from safetensors.torch import save_file

    p = str(path)
    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(f"{p}: safetensors metadata must map strings to strings")
    prepared = prepare_tensors_for_save(tensors, where=p)
    with atomic_write(p) as tmp:
        try:
            save_file(prepared, str(tmp), metadata=dict(metadata) if metadata else None)
        except Exception as exc:
            raise CheckpointError(f"{p}: safetensors could not save: {exc}") from exc

"""Load, check and save state_dicts from untrusted checkpoint files.

Supported inputs: ``.safetensors`` (validated header first), pickle checkpoints
(``.pt``/``.pth``/``.bin``/``.ckpt``) through ``torch.load(weights_only=True)``
only, Hugging Face style directories (single or sharded), and files of unknown
extension whose format is sniffed from the magic bytes. Every failure is a
:class:`~wsl.errors.CheckpointError` naming the file and the problem.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch

from wsl.errors import CheckpointError, StateDictMismatchError, UnsafeCheckpointError, short_list
from wsl.io.atomic import atomic_save_safetensors, atomic_write, prepare_tensors_for_save
from wsl.io.safetensors_check import load_safetensors, read_safetensors_header

__all__ = [
    "PICKLE_SUFFIXES",
    "SUPPORTED_FORMATS",
    "check_finite",
    "check_state_dict",
    "load_checkpoint_dir_config",
    "load_state_dict",
    "read_checkpoint_metadata",
    "read_json_object",
    "require_finite",
    "save_state_dict",
]

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SUPPORTED_FORMATS = (
    ".safetensors, .pt/.pth/.bin/.ckpt (torch.save, weights only), or a directory with "
    "model.safetensors, model.safetensors.index.json, pytorch_model.bin or "
    "pytorch_model.bin.index.json"
)
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
_DIR_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_MAX_JSON_BYTES = 64 * 1024 * 1024
_GLOBAL_RE = re.compile(r"GLOBAL (\S+)")


def read_json_object(
    path: str | os.PathLike[str],
    *,
    what: str = "JSON file",
    error: type[Exception] = CheckpointError,
    max_bytes: int = _MAX_JSON_BYTES,
) -> dict[str, Any]:
    """Read a JSON file that must hold an object; errors name the path, line and column."""
    p = Path(path)
    try:
        if not p.is_file():
            raise error(f"{p}: {what} not found" if not p.exists() else f"{p}: not a regular file")
        size = p.stat().st_size
        if size > max_bytes:
            raise error(f"{p}: {what} is {size} bytes (limit {max_bytes})")
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{p}: {what} is not valid UTF-8 (byte {exc.start})") from exc
    except OSError as exc:
        raise error(f"{p}: cannot read {what}: {exc.strerror or exc}") from exc
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(
            f"{p}: {what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from exc
    except (ValueError, RecursionError) as exc:
        raise error(f"{p}: {what} is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise error(f"{p}: {what} must hold a JSON object, got {type(obj).__name__}")
    return obj


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items()
               if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
        return f"a {type(obj).__name__} with non-tensor entries {short_list(bad, 5)}"
    return f"a {type(obj).__name__}"


def _is_flat(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _unwrap(obj: Any, depth: int = 0) -> Mapping[str, torch.Tensor] | None:
    if _is_flat(obj):
        return obj
    if isinstance(obj, Mapping) and depth < 2:
        for key in CONTAINER_KEYS:
            if key in obj:
                found = _unwrap(obj[key], depth + 1)
                if found is not None:
                    return found
    return None


def _normalize(obj: Any, where: str) -> dict[str, torch.Tensor]:
    """Unwrap common checkpoint containers into a flat ``{str: Tensor}`` dict."""
    found = _unwrap(obj)
    if found is None:
        raise CheckpointError(
            f"{where}: not a state_dict: found {_describe(obj)}; expected a mapping of names "
            f"to tensors, possibly under one of {', '.join(repr(k) for k in CONTAINER_KEYS)}"
        )
    sd: dict[str, torch.Tensor] = {}
    for name, t in found.items():
        if t.layout != torch.strided:
            raise CheckpointError(f"{where}: tensor {name!r} has layout {t.layout}; only dense")
        sd[name] = t.detach() if isinstance(t, torch.nn.Parameter) else t
    return sd


def _strip_ddp(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the ``module.`` prefix DistributedDataParallel adds, if *every* key has it."""
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _load_pickle(path: Path, device: str) -> dict[str, torch.Tensor]:
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:
        _raise_load_error(path, exc)
    return _normalize(obj, str(path))


def _raise_load_error(path: Path, exc: Exception) -> NoReturn:
    """Classify a ``torch.load`` failure: refused pickle vs. corrupt/unknown file."""
    msg = str(exc)
    m = _GLOBAL_RE.search(msg)
    if m:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the pickle needs arbitrary code (global {m.group(1)}) "
            "to be unpickled; only tensors and plain containers are allowed (weights_only). "
            "Re-save the state_dict as .safetensors in a trusted environment"
        ) from exc
    if isinstance(exc, pickle.UnpicklingError):
        lines = [s.strip() for s in msg.splitlines()
                 if s.strip() and not s.startswith("Check the documentation")]
        detail = lines[-1][:200] if lines else "no detail"
        raise UnsafeCheckpointError(
            f"{path}: refused to load: the pickle uses operations outside the safe "
            f"weights-only subset ({detail}); it may need arbitrary code and was refused"
        ) from exc
    text = msg.strip().splitlines()[0][:300] if msg.strip() else ""
    raise CheckpointError(
        f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {text})"
    ) from exc


def _sniff(path: Path) -> str | None:
    """Return "safetensors", "pickle" or None from the file's first bytes."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read file: {exc.strerror or exc}") from exc
    if head.startswith(b"PK\x03\x04") or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5):
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if n <= path.stat().st_size - 8:
            return "safetensors"
    return None


def _safe_member(directory: Path, name: Any, index: Path) -> Path:
    """Resolve a shard file name from an index, refusing anything outside ``directory``."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise CheckpointError(f"{index}: weight_map file name {name!r} is not a valid file name")
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or "\\" in name:
        raise CheckpointError(f"{index}: weight_map file {name!r} points outside {directory}")
    root = directory.resolve()
    full = (directory / rel).resolve()
    if full != root and root not in full.parents:
        raise CheckpointError(f"{index}: weight_map file {name!r} points outside {directory}")
    if not full.is_file():
        raise CheckpointError(f"{index}: weight_map file {name!r} does not exist in {directory}")
    return full


def _load_sharded(index: Path, device: str) -> dict[str, torch.Tensor]:
    data = read_json_object(index, what="shard index")
    wmap = data.get("weight_map")
    if not isinstance(wmap, dict) or not wmap:
        raise CheckpointError(f"{index}: 'weight_map' must be a non-empty JSON object")
    directory = index.parent
    by_file: dict[Path, set[str]] = {}
    for tensor_name, file_name in wmap.items():
        by_file.setdefault(_safe_member(directory, file_name, index), set()).add(tensor_name)
    out: dict[str, torch.Tensor] = {}
    for shard, names in by_file.items():
        if shard.name.lower().endswith(".index.json"):
            raise CheckpointError(f"{index}: weight_map file {shard.name!r} is an index")
        part = _load_leaf(shard, device)
        if set(part) != names:
            missing, extra = sorted(names - set(part)), sorted(set(part) - names)
            raise CheckpointError(
                f"{shard}: shard does not match {index.name}: missing {short_list(missing)}; "
                f"not in weight_map {short_list(extra)}"
            )
        out.update(part)
    return out


def _load_leaf(path: Path, device: str) -> dict[str, torch.Tensor]:
    """Load one weights file (never an index) by extension, else by sniffing."""
    if path.name.lower().endswith(".safetensors"):
        return load_safetensors(path, device)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _load_pickle(path, device)
    kind = _sniff(path)
    if kind == "safetensors":
        return load_safetensors(path, device)
    if kind == "pickle":
        return _load_pickle(path, device)
    raise CheckpointError(f"{path}: unrecognized checkpoint format; supported: {SUPPORTED_FORMATS}")


def _load_file(path: Path, device: str) -> dict[str, torch.Tensor]:
    if path.name.lower().endswith(".index.json"):
        return _load_sharded(path, device)
    return _load_leaf(path, device)


def _dir_weights(directory: Path) -> Path:
    for name in _DIR_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(
        f"{directory}: directory holds no weights (looked for {', '.join(_DIR_FILES)})"
    )


def load_state_dict(
    path: str | os.PathLike[str], *, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Load a flat ``{name: tensor}`` state_dict from a file or checkpoint directory."""
    p = Path(path)
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{p}: invalid device {device!r}") from exc
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    if p.is_dir():
        return _strip_ddp(_load_file(_dir_weights(p), device))
    if not p.is_file():
        raise CheckpointError(f"{p}: not a regular file")
    return _strip_ddp(_load_file(p, device))


def read_checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The safetensors ``__metadata__`` of a file or directory checkpoint ({} if none)."""
    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
        if not p.is_file():
            return {}
    if p.is_file() and (p.name.lower().endswith(".safetensors") or _sniff(p) == "safetensors"):
        return dict(read_safetensors_header(p).metadata)
    return {}


def load_checkpoint_dir_config(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``config.json`` of a checkpoint directory (or next to a weights file), if any."""
    p = Path(path)
    cfg = (p if p.is_dir() else p.parent) / "config.json"
    if not cfg.is_file():
        return None
    return read_json_object(cfg, what="config.json")


def check_state_dict(
    expected: Mapping[str, Sequence[int]],
    state_dict: Mapping[str, torch.Tensor | Sequence[int]],
    *,
    where: str = "",
) -> None:
    """Raise :class:`StateDictMismatchError` unless keys and shapes match exactly."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = []
    for name, shape in expected.items():
        if name in state_dict:
            got = state_dict[name]
            got_shape = tuple(got.shape) if isinstance(got, torch.Tensor) else tuple(got)
            if got_shape != tuple(shape):
                mismatched.append((name, tuple(shape), got_shape))
    if missing or unexpected or mismatched:
        raise StateDictMismatchError(missing, unexpected, mismatched, where)


def check_finite(state_dict: Mapping[str, torch.Tensor], *, where: str = "") -> list[str]:
    """Names of floating/complex tensors holding NaN or Inf (``where`` is unused here)."""
    del where
    bad = []
    for name, t in state_dict.items():
        if (t.is_floating_point() or t.is_complex()) and t.numel():
            if not bool(torch.isfinite(t).all()):
                bad.append(name)
    return bad


def require_finite(state_dict: Mapping[str, torch.Tensor], *, where: str = "") -> None:
    """Raise :class:`CheckpointError` naming every tensor that holds NaN or Inf."""
    bad = check_finite(state_dict)
    if bad:
        prefix = f"{where}: " if where else ""
        raise CheckpointError(f"{prefix}non-finite values (NaN/Inf) in {short_list(bad)}")


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Save atomically: ``torch.save`` for .pt/.pth/.bin/.ckpt, else safetensors."""
    p = Path(path)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        tensors = prepare_tensors_for_save(state_dict, where=str(p))
        with atomic_write(p) as tmp:
            torch.save(tensors, tmp)
        return
    atomic_save_safetensors(state_dict, p, metadata)

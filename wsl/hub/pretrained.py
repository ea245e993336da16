"""``WeightSpace.from_pretrained``: the weight space of a Hub checkpoint from its config and safetensors header.

For ``hf://ORG/NAME[@REV][/PATH]`` (or a local checkpoint folder), only
``config.json`` is downloaded, and the *header* of the weights: the tensor
names and shapes of ``model.safetensors`` (or of every shard of
``model.safetensors.index.json``), read with HTTP range requests
(``huggingface_hub.parse_safetensors_file_metadata``) -- never the weights.
Offline (``HF_HUB_OFFLINE=1``), the files cached in the snapshot are read
instead (a header-only safetensors file is enough). The module is built from
the config on the meta device (the local BERT/ViT/GPT-2 ports for their
classes -- they carry the checkpoints' tensor names, and need no optional
package --, ``transformers``, the optional extra, for every other model type
it knows), checked against the header (the same names and shapes, tied
weights allowed to be absent; names that ``transformers`` renames at load
time are reported when the shapes still match one to one), and traced (:meth:`wsl.space.WeightSpace.from_module`, example
inputs read from the config by :func:`wsl.archs.hf_inputs.hf_example_inputs`).
A 7B-parameter configuration is traced without allocating its weights.

:func:`load_space` is registered with
:func:`wsl.space.weightspace.register_pretrained_loader` by :mod:`wsl.hub`.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from torch import nn

from wsl.errors import ArchitectureError, CheckpointError, StateDictMismatchError
from wsl.hub.uri import HubRef, hub_error, huggingface, is_hub_uri, is_offline, parse_uri
from wsl.space import WeightSpace

__all__ = ["PretrainedSpace", "checkpoint_header", "load_space", "pretrained_space"]

_MAX_HEADER = 100 * 1024 * 1024
SINGLE, INDEX = "model.safetensors", "model.safetensors.index.json"


@dataclass
class PretrainedSpace:
    """What :func:`pretrained_space` found: the space, the config, and how the checkpoint was checked."""

    space: WeightSpace
    config: dict[str, Any]
    module_type: str
    checked: bool  #: names and shapes compared with the checkpoint's safetensors header
    notes: list[str] = field(default_factory=list)


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _local_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes from a safetensors file's header (the data after it is not read, and may be absent)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) != 8:
                raise CheckpointError(f"{path}: shorter than a safetensors header")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER:
                raise CheckpointError(f"{path}: safetensors header of {n} bytes exceeds {_MAX_HEADER}")
            text = fh.read(n)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        header = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{path}: safetensors header is not valid JSON ({exc})") from exc
    return _shapes(header, str(path))


def _shapes(header: Any, where: str) -> dict[str, tuple[int, ...]]:
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: safetensors header is not a JSON object")
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise CheckpointError(f"{where}: header entry '{name}' has no valid shape")
        out[name] = tuple(shape)
    return out


def _shard_names(index: Path) -> list[str]:
    try:
        names = sorted({str(v) for v in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index}: not a valid sharded-checkpoint index ({exc})") from exc
    for n in names:
        if n.startswith("/") or ".." in PurePosixPath(n).parts:
            raise CheckpointError(f"{index}: names a shard outside its folder: {n!r}")
    return names


def _hub_header(ref: HubRef) -> tuple[dict[str, tuple[int, ...]] | None, str]:
    """The checkpoint header of a Hub folder, and a note on how (or why not) it was read."""
    from wsl.hub.resolve import _listing, _storage, resolve

    listing = _listing(ref, "model")
    files = listing.files
    snapshot = _storage(ref) / "snapshots" / listing.commit
    single, index = _join(ref.path, SINGLE), _join(ref.path, INDEX)
    if single in files:
        names = [single]
    elif index in files:
        idx = resolve(ref.with_(revision=listing.commit, path=index).uri)
        parent = str(PurePosixPath(index).parent) if "/" in index else ""
        names = [_join(parent, n) for n in _shard_names(idx)]
    else:
        return None, "no safetensors weights in the repository: names and shapes not checked"
    out: dict[str, tuple[int, ...]] = {}
    for name in names:
        local = snapshot / name
        if local.is_file():
            out.update(_local_header(local))
        elif listing.remote:
            try:
                meta = huggingface().HfApi().parse_safetensors_file_metadata(
                    ref.repo_id, name, repo_type=ref.repo_type, revision=listing.commit)
            except Exception as exc:
                raise hub_error(exc, ref.with_(path=name), "model") from exc
            out.update({k: tuple(int(s) for s in v.shape) for k, v in meta.tensors.items()})
        else:
            return None, (f"{name} is not in the local cache and the Hub cannot be reached"
                          f"{' (HF_HUB_OFFLINE=1)' if is_offline() else ''}: names and shapes not checked")
    return out, f"names and shapes checked against the safetensors header of {len(names)} file(s)"


def _local(source: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]] | None, str]:
    folder = source if source.is_dir() else source.parent
    config = _read_config(folder / "config.json", str(folder / "config.json"))
    if (folder / SINGLE).is_file():
        return config, _local_header(folder / SINGLE), "names and shapes checked against model.safetensors' header"
    if (folder / INDEX).is_file():
        out: dict[str, tuple[int, ...]] = {}
        for n in _shard_names(folder / INDEX):
            out.update(_local_header(folder / n))
        return config, out, "names and shapes checked against the shards' headers"
    return config, None, "no safetensors weights in the folder: names and shapes not checked"


def _read_config(path: Path, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{where}: no config.json (not a Hugging Face checkpoint)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{where}: cannot read config.json: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: config.json must hold a JSON object")
    return data


def checkpoint_header(source: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, tuple[int, ...]] | None, str]:
    """(config, {tensor: shape} or None, note) of an ``hf://`` URI or a local checkpoint folder."""
    from wsl.hub.resolve import resolve

    if is_hub_uri(source):
        ref = parse_uri(str(source))
        cfg_path = resolve(ref.with_(path=_join(ref.path, "config.json")).uri)
        config = _read_config(cfg_path, ref.with_(path=_join(ref.path, "config.json")).uri)
        shapes, note = _hub_header(ref)
        return config, shapes, note
    return _local(Path(source))


def _build_on_meta(config: dict[str, Any], where: str) -> nn.Module:
    from wsl.archs.hf import build_hf_model

    if not isinstance(config.get("model_type"), str):
        raise ArchitectureError(f"{where}: config.json has no 'model_type' (not a transformers checkpoint)")
    with torch.device("meta"), _no_init():  # the local BERT/ViT/GPT-2 ports when they have the class
        return build_hf_model(config, prefer_local=True).eval()


@contextlib.contextmanager
def _no_init() -> Iterator[None]:
    """``torch.nn.init`` as no-ops: a meta tensor has no values to initialise, and the first random fill on the
    meta device imports torch's reference kernels (seconds)."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    try:
        for n in names:
            setattr(torch.nn.init, n, lambda t, *a, **k: t)
        yield
    finally:
        for n, fn in saved.items():
            setattr(torch.nn.init, n, fn)


def _check(module: nn.Module, shapes: dict[str, tuple[int, ...]], where: str) -> str | None:
    """Raise :class:`StateDictMismatchError` unless the module's tensors are the header's (a note if only the
    names differ: ``transformers`` renames some checkpoints' tensors when it loads them)."""
    from wsl.archs.hf import normalize_hf_state_dict

    fake = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    got = {k: tuple(v.shape) for k, v in normalize_hf_state_dict(module, fake).items()}
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    params = dict(module.named_parameters(remove_duplicate=False))
    tied = {k for k in want if k not in got and any(q is params.get(k) and n in got for n, q in params.items()
                                                     if n != k)}
    buffers = {k for k, _ in module.named_buffers()}
    missing = set(want) - set(got) - tied - buffers
    unexpected = set(got) - set(want)
    mism = [(k, want[k], got[k]) for k in set(want) & set(got) if want[k] != got[k]]
    if not (missing or unexpected or mism):
        return None
    if sorted(want[k] for k in set(want) - tied - buffers) == sorted(got.values()):
        return (f"the checkpoint names its tensors differently ({len(unexpected)} renamed, e.g. "
                f"{sorted(unexpected)[0]!r}); the shapes match one to one")
    raise StateDictMismatchError(missing, unexpected, mism, where=where)


def pretrained_space(source: str | os.PathLike[str], *, example_input: Any = None,
                     frontend: str = "auto") -> PretrainedSpace:
    """The weight space of a Hugging Face checkpoint, without its weights (see the module docstring)."""
    from wsl.archs.hf_inputs import hf_example_inputs

    where = str(source)
    config, shapes, note = checkpoint_header(source)
    module = _build_on_meta(config, where)
    notes = [note]
    if shapes is not None:
        renamed = _check(module, shapes, where)
        notes += [renamed] if renamed else []
    inputs = example_input if example_input is not None else hf_example_inputs(module)
    space = WeightSpace.from_module(module, inputs, frontend=frontend)
    return PretrainedSpace(space, config, type(module).__name__, shapes is not None, notes)


def load_space(source: Any, example_input: Any = None, frontend: str = "auto") -> WeightSpace | None:
    """The loader registered for :meth:`WeightSpace.from_pretrained`: ``hf://`` URIs and checkpoint folders."""
    if is_hub_uri(source) or (isinstance(source, (str, os.PathLike)) and (Path(source) / "config.json").is_file()):
        return pretrained_space(source, example_input=example_input, frontend=frontend).space
    return None


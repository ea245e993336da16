"""Safe checkpoint I/O: validated loading, atomic writes, architecture references, URI schemes.

Anything read here may come from an untrusted upload: bad input raises a
:class:`~wsl.errors.CheckpointError` (or :class:`~wsl.errors.ArchitectureError`)
naming the file and the problem; pickles are only read with
``torch.load(weights_only=True)``. Paths may be URIs of a scheme registered
with :func:`register_scheme` (``hf://`` by :mod:`wsl.hub`); :func:`local_path`
turns them into local paths.
"""

from __future__ import annotations

from wsl.io.archref import load_model, parse_call_args, resolve_arch, space_from_state_dict
from wsl.io.atomic import atomic_open, atomic_save_safetensors, atomic_write
from wsl.io.checkpoint import (
    SUPPORTED_FORMATS,
    check_finite,
    check_state_dict,
    load_checkpoint_dir_config,
    load_state_dict,
    read_checkpoint_metadata,
    read_json_object,
    require_finite,
    save_state_dict,
)
from wsl.io.safetensors_check import (
    inspect_safetensors,
    load_safetensors,
    read_safetensors_header,
)
from wsl.io.save_module import save_module
from wsl.io.uri import local_path, register_scheme, registered_schemes, uri_scheme

__all__ = [
    "SUPPORTED_FORMATS",
    "atomic_open",
    "atomic_save_safetensors",
    "atomic_write",
    "check_finite",
    "check_state_dict",
    "inspect_safetensors",
    "load_checkpoint_dir_config",
    "local_path",
    "load_model",
    "load_safetensors",
    "load_state_dict",
    "parse_call_args",
    "read_checkpoint_metadata",
    "read_json_object",
    "read_safetensors_header",
    "register_scheme",
    "registered_schemes",
    "require_finite",
    "resolve_arch",
    "save_module",
    "save_state_dict",
    "space_from_state_dict",
    "uri_scheme",
]

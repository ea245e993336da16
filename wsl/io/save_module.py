"""Save a network so that it carries its architecture: ``wsl.save(module, "net.safetensors")``.

The file is an ordinary safetensors file of ``module.state_dict()`` whose
``__metadata__["wsl_arch"]`` holds the module's JSON architecture description
(:func:`wsl.archs.describe.describe`). Everything that reads a checkpoint
(``wsl inspect``, ``wsl predict``, ``wsl serve``, :func:`wsl.io.load_model`)
rebuilds the network from it, without ``--arch``. Describable are modules built
by ``wsl.archs`` (registered factories such as ``small_cnn`` or ``resnet18``,
or :func:`wsl.archs.describe.build` of a JSON description) and plain
``nn.Sequential`` stacks of supported layers; any other module is refused
before anything is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from wsl.errors import ArchitectureError, CheckpointError
from wsl.io.atomic import atomic_save_safetensors
from wsl.io.checkpoint import check_state_dict

__all__ = ["save_module"]

_INSTEAD = ("build it with wsl.archs (a registered factory, or wsl.archs.describe.build of a JSON description) "
            "or as nn.Sequential of standard layers; or save its state_dict with wsl.io.save_state_dict and pass "
            "--arch pkg.module:factory when loading it")


def save_module(module: nn.Module, path: str | os.PathLike[str], *,
                input_shape: tuple[int, ...] | None = None, metadata: dict[str, str] | None = None) -> Path:
    """Write ``module``'s weights and architecture to ``path`` (``.safetensors``), atomically; return the path.

    ``metadata`` adds string entries to the file's ``__metadata__`` (``wsl_arch`` is reserved).

    ``input_shape`` (no batch dimension) is only needed for an ``nn.Sequential``
    whose input shape cannot be guessed (one not starting with Linear or
    Embedding). Raises :class:`~wsl.errors.ArchitectureError` if the
    architecture cannot be described, or if the module no longer matches its
    recorded description (a layer replaced after it was built), and
    :class:`~wsl.errors.CheckpointError` for a file name other than
    ``*.safetensors``.
    """
    from wsl.archs.describe import build, describe

    p = Path(path)
    if not isinstance(module, nn.Module):
        raise ArchitectureError(f"wsl.save {p}: expected a torch.nn.Module, got a {type(module).__name__}; "
                                "a bare state_dict has no architecture: use wsl.io.save_state_dict")
    if p.suffix.lower() != ".safetensors":
        raise CheckpointError(f"wsl.save {p}: only safetensors files carry the architecture; "
                              "name the file *.safetensors")
    name = type(module).__name__
    try:
        desc = describe(module, input_shape=input_shape)
        with torch.device("meta"):
            rebuilt = build(desc)
    except ArchitectureError as exc:
        raise ArchitectureError(f"wsl.save {p}: cannot record the architecture of {name} ({exc}); "
                                f"{_INSTEAD}") from None
    state = module.state_dict()
    try:
        check_state_dict({k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}, state)
    except CheckpointError as exc:
        raise ArchitectureError(f"wsl.save {p}: {name} no longer matches its recorded architecture "
                                f"(wsl_arch), so the file could not be loaded back ({exc}); rebuild it from a matching "
                                "description, or save its state_dict with wsl.io.save_state_dict and pass --arch "
                                "when loading it") from None
    extra = dict(metadata or {})
    if "wsl_arch" in extra or not all(isinstance(k, str) and isinstance(v, str) for k, v in extra.items()):
        raise CheckpointError(f"wsl.save {p}: metadata must map strings to strings and not set 'wsl_arch'")
    atomic_save_safetensors(state, p, {**extra, "wsl_arch": json.dumps(desc, sort_keys=True)})
    return p

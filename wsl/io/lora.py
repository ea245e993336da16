"""PEFT LoRA adapters: read them on their own (no ``peft`` needed) or merged into the base, with their weight space.

An adapter directory (local or a registered URI such as ``hf://``) holds
``adapter_config.json`` and ``adapter_model.safetensors`` (or ``.bin``, read
with ``weights_only``) whose keys are ``base_model.model.<layer>.lora_A.weight``
and ``...lora_B.weight`` (PEFT drops the adapter name when saving). The base is
any architecture reference :func:`wsl.io.resolve_arch` takes: an ``nn.Module``,
a Hugging Face ``config.json`` dict, a JSON description or a registered name.

:func:`read_lora` returns the base with every adapted layer wrapped in a
:class:`wsl.archs.lora.LoraLayer` (``merge=False``: the weight space has a
rank group per adapted layer) or with ``W + s B A`` written into the base
weights (``merge=True``: the base's own weight space). The scaling is
``s = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``), ``alpha`` taken
from ``alpha_pattern`` where a pattern matches the layer, as PEFT does.
:func:`peft_space` is the weight space of a live ``peft.PeftModel`` (its
state_dict names), traced through the model it wraps.
"""

from __future__ import annotations

import copy
import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsl.archs.lora import LoraLayer, lora_shape
from wsl.errors import ArchitectureError, CheckpointError
from wsl.io.archref import ArchRef, resolve_arch
from wsl.io.checkpoint import load_state_dict, read_json_object
from wsl.io.uri import local_path
from wsl.space import WeightSpace
from wsl.space.spec import WeightSpaceSpec

__all__ = ["peft_space", "read_lora"]

PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<layer>.+)\.lora_(?P<which>A|B)\.(?P<what>weight|bias)$")
_UNSUPPORTED = {"use_dora": "DoRA", "modules_to_save": "modules_to_save", "target_parameters": "target_parameters",
                "trainable_token_indices": "trainable tokens"}


def _config(directory: Path) -> dict[str, Any]:
    cfg = read_json_object(directory / "adapter_config.json", what="adapter config")
    where = directory / "adapter_config.json"
    if cfg.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{where}: peft_type {cfg.get('peft_type')!r} is not LORA")
    for key, what in _UNSUPPORTED.items():
        if cfg.get(key):
            raise CheckpointError(f"{where}: {what} ('{key}') is not supported")
    if cfg.get("bias", "none") != "none":
        raise CheckpointError(f"{where}: bias={cfg['bias']!r} (trained base biases) is not supported; use 'none'")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key, 8), (int, float)) or cfg.get(key, 8) <= 0:
            raise CheckpointError(f"{where}: '{key}' must be a positive number, got {cfg.get(key)!r}")
    return cfg


def _weights(directory: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (directory / name).is_file():
            return directory / name, load_state_dict(directory / name)
    raise CheckpointError(f"{directory}: no adapter_model.safetensors or adapter_model.bin")


def _by_layer(path: Path, tensors: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key[len(PREFIX):] if key.startswith(PREFIX) else key)
        if m is None:
            raise CheckpointError(f"{path}: tensor '{key}' is not a LoRA factor (expected "
                                  f"'{PREFIX}<layer>.lora_A.weight' / '.lora_B.weight')")
        layers.setdefault(m["layer"], {})[f"{m['which']}.{m['what']}"] = t
    for layer, parts in layers.items():
        if "A.weight" not in parts or "B.weight" not in parts or "A.bias" in parts:
            raise CheckpointError(f"{path}: layer '{layer}' needs lora_A.weight and lora_B.weight "
                                  f"(found {sorted(parts)})")
    return layers


def _alpha(cfg: dict[str, Any], layer: str) -> float:
    for pattern, alpha in (cfg.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", layer):
            return float(alpha)
    return float(cfg.get("lora_alpha", 8))


def read_lora(adapter: str | os.PathLike[str], base: ArchRef, *, merge: bool = False, example_input: Any = None,
              adapter_name: str = "default", allow_code: bool = False) -> tuple[nn.Module, WeightSpace]:
    """A LoRA adapter directory applied to ``base``: ``(module, its WeightSpace)`` (see module docstring)."""
    directory = Path(local_path(adapter))
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not an adapter directory")
    cfg = _config(directory)
    wpath, tensors = _weights(directory)
    module = copy.deepcopy(base) if isinstance(base, nn.Module) else resolve_arch(base, allow_code=allow_code)
    for layer, parts in _by_layer(wpath, tensors).items():
        try:
            target = module.get_submodule(layer)
        except AttributeError as exc:
            raise ArchitectureError(f"{wpath}: the base has no layer '{layer}' for the adapter") from exc
        n_in, n_out = lora_shape(target)
        a, b = parts["A.weight"], parts["B.weight"]
        r = int(a.shape[0])
        scaling = _alpha(cfg, layer) / (math.sqrt(r) if cfg.get("use_rslora") else r)
        wrapped = LoraLayer(target, {adapter_name: (r, scaling)}, lora_bias="B.bias" in parts)
        want = {"lora_A": tuple(wrapped.lora_A[adapter_name].weight.shape),
                "lora_B": tuple(wrapped.lora_B[adapter_name].weight.shape)}
        if (tuple(a.shape), tuple(b.shape)) != (want["lora_A"], want["lora_B"]):
            raise CheckpointError(f"{wpath}: layer '{layer}' ({n_in} -> {n_out}) needs lora_A {want['lora_A']} and "
                                  f"lora_B {want['lora_B']}, the file has {tuple(a.shape)} and {tuple(b.shape)}")
        with torch.no_grad():
            wrapped.lora_A[adapter_name].weight.copy_(a)
            wrapped.lora_B[adapter_name].weight.copy_(b)
            if "B.bias" in parts:
                wrapped.lora_B[adapter_name].bias.copy_(parts["B.bias"])
            if merge:
                target.weight.add_(wrapped.delta(adapter_name).to(target.weight.dtype))
                if "B.bias" in parts:
                    if target.bias is None:
                        raise CheckpointError(f"{wpath}: layer '{layer}' has a LoRA bias but its base has none")
                    target.bias.add_(parts["B.bias"].to(target.bias.dtype) * scaling)
        if not merge:
            parent, _, child = layer.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, child, wrapped)
    return module, WeightSpace.from_module(module, example_input)


def _renamed(spec: WeightSpaceSpec, prefix: str) -> WeightSpaceSpec:
    def n(name: str) -> str:
        return prefix + name

    meta = dict(spec.meta)
    meta["unread"] = tuple(n(x) for x in meta.get("unread", ()))
    meta["tied"] = tuple((n(a), n(b)) for a, b in meta.get("tied", ()))
    return replace(
        spec, tensors=tuple(replace(t, name=n(t.name), module=n(t.module)) for t in spec.tensors),
        connections=tuple(replace(c, module=n(c.module), tensor=None if c.tensor is None else n(c.tensor))
                          for c in spec.connections),
        node_params=tuple(replace(p, tensor=n(p.tensor)) for p in spec.node_params),
        extras=tuple(n(x) for x in spec.extras), aliases=tuple((n(a), n(b)) for a, b in spec.aliases),
        meta=tuple(sorted(meta.items())))


def peft_space(model: nn.Module, example_input: Any = None) -> WeightSpace:
    """The weight space of a ``peft.PeftModel`` under its own state_dict names.

    ``PeftModel.forward(*args, **kwargs)`` cannot be traced by torch.fx, so the
    model it wraps (``model.get_base_model()``, whose LoRA layers the structural
    rule reads) is traced and its tensor names get the wrapper's prefix.
    """
    get = getattr(model, "get_base_model", None)
    if not callable(get):
        raise ArchitectureError(f"peft_space: {type(model).__name__} is not a PEFT model (no get_base_model())")
    inner = get()
    prefix = next((name for name, m in model.named_modules() if m is inner), None)
    if prefix is None:
        raise ArchitectureError("peft_space: the base model is not a submodule of the PEFT model")
    space = WeightSpace.from_module(inner, example_input)
    spec = _renamed(space.spec, f"{prefix}." if prefix else "")
    names = set(model.state_dict())
    if names != {t.name for t in spec.tensors}:
        raise ArchitectureError(f"peft_space: traced names do not match the PEFT model's state_dict "
                                f"({sorted(names ^ {t.name for t in spec.tensors})[:4]})")
    return WeightSpace(spec, arch=space.arch)

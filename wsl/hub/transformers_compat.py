"""Hugging Face (``transformers``-format) checkpoints: ``config.json`` + safetensors weights.

A checkpoint folder (or ``hf://`` model repository) holds ``config.json`` and
``model.safetensors`` (or ``model.safetensors.index.json`` and its shards, or
``pytorch_model.bin``). :func:`build_hf_model` turns the config into a module:

* model types with a local port (BERT-style encoders, ViT, GPT-2; see
  :func:`wsl.archs.registry.from_hf_config`) use it: same parameter names as
  ``transformers``, traceable by :class:`wsl.space.WeightSpace`;
* any other model type needs the optional extra (``pip install
  'wsl[transformers]'``) and is built with ``transformers.AutoModel.from_config``
  (or the class named in ``architectures``) -- no weight download, no remote
  code. Such modules load and expose their weights, but the weight-space
  tracer cannot follow ``transformers`` (>= 5) forwards yet (``torch.fx``
  stops at their ``**kwargs`` decorators), so ``WeightSpace.from_module``
  raises a :class:`~wsl.errors.TraceError` on them.

:func:`load_hf_model` resolves, builds and loads the weights (safe loaders of
:mod:`wsl.io`, keys adapted by ``normalize_hf_state_dict``).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsl.errors import ArchitectureError, CheckpointError

__all__ = ["EXTRA_HINT", "build_hf_model", "load_hf_model", "local_model_types", "transformers_available"]

EXTRA_HINT = "pip install 'wsl[transformers]'"


def transformers_available() -> bool:
    """Whether the optional ``transformers`` package is importable."""
    return importlib.util.find_spec("transformers") is not None


def local_model_types() -> tuple[str, ...]:
    """``model_type`` values built by a local port (no ``transformers`` needed)."""
    from wsl.archs import registry

    return tuple(getattr(registry, "_HF", {}))


def _read_config(config: dict[str, Any] | str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    if isinstance(config, dict):
        return config, "config"
    path = Path(config)
    path = path / "config.json" if path.is_dir() else path
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no config.json (not a Hugging Face checkpoint folder)") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read config.json: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: config.json must hold a JSON object")
    return data, str(path)


def _transformers_model(config: dict[str, Any], where: str) -> nn.Module:
    try:
        transformers = importlib.import_module("transformers")
    except ImportError as exc:
        raise ArchitectureError(f"{where}: model_type {config.get('model_type')!r} has no local implementation "
                                f"(local: {', '.join(local_model_types())}); install the optional extra: "
                                f"{EXTRA_HINT}") from exc
    if "auto_map" in config:
        raise ArchitectureError(f"{where}: the config needs custom code from its repository (auto_map); wsl never "
                                "runs remote code")
    fields = {k: v for k, v in config.items() if k not in ("model_type", "transformers_version")}
    try:
        cfg = transformers.AutoConfig.for_model(config["model_type"], **fields)
        arch = (config.get("architectures") or [None])[0]
        cls = getattr(transformers, arch, None) if isinstance(arch, str) else None
        if isinstance(cls, type) and issubclass(cls, nn.Module) and hasattr(cls, "_from_config"):
            return cls._from_config(cfg)
        return transformers.AutoModel.from_config(cfg)
    except (ValueError, KeyError, TypeError, AttributeError, ImportError) as exc:
        raise ArchitectureError(f"{where}: transformers cannot build model_type {config['model_type']!r}: "
                                f"{' '.join(str(exc).split())[:300]}") from exc


def build_hf_model(config: dict[str, Any] | str | os.PathLike[str], *, prefer_local: bool = True) -> nn.Module:
    """A module (random weights) for a Hugging Face ``config.json`` (dict, file or folder).

    With ``prefer_local`` (default) model types with a local port use it;
    otherwise (or with ``prefer_local=False``) ``transformers`` builds it.
    """
    from wsl.archs.registry import from_hf_config

    cfg, where = _read_config(config)
    if not isinstance(cfg.get("model_type"), str):
        raise ArchitectureError(f"{where}: field 'model_type' missing (not a Hugging Face config)")
    if prefer_local and cfg["model_type"] in local_model_types():
        try:
            return from_hf_config(cfg)
        except ArchitectureError:
            if not transformers_available():  # e.g. a head the local port lacks
                raise
    return _transformers_model(cfg, where)


def load_hf_model(source: str | os.PathLike[str], *, prefer_local: bool = True, strict: bool = True,
                  device: str = "cpu") -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """``(module in eval mode, state_dict)`` of a Hugging Face checkpoint folder or ``hf://`` repository."""
    from wsl.archs.registry import normalize_hf_state_dict
    from wsl.io import check_state_dict, load_state_dict

    path = Path(source)
    if str(source).startswith("hf://"):
        from wsl.hub.resolve import resolve

        path = resolve(str(source), repo_type="model")
    folder = path if path.is_dir() else path.parent
    module = build_hf_model(folder, prefer_local=prefer_local)
    sd = normalize_hf_state_dict(module, load_state_dict(path, device=device), drop_unused=not strict)
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if strict:
        tied = {k for k in want if k not in sd and _tied_to(module, k, sd)}
        check_state_dict({k: v for k, v in want.items() if k not in tied}, sd, where=str(path))
    try:
        module.load_state_dict(sd, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: load_state_dict failed: {' '.join(str(exc).split())[:300]}") from exc
    return module.to(device).eval(), sd


def _tied_to(module: nn.Module, key: str, sd: dict[str, torch.Tensor]) -> bool:
    """Whether parameter ``key`` shares storage with one present in ``sd`` (tied embeddings)."""
    params = dict(module.named_parameters(remove_duplicate=False))
    p = params.get(key)
    return p is not None and any(q is p and n in sd for n, q in params.items() if n != key)

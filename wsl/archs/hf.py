"""Hugging Face ``config.json`` dicts -> modules: the local ports, or ``transformers`` for other model types.

:func:`from_hf_config` builds the local BERT / ViT / GPT-2 classes (same
parameter names as ``transformers``, traceable by :class:`wsl.space.WeightSpace`);
:func:`normalize_hf_state_dict` adapts a Hugging Face checkpoint's keys so that
``load_state_dict(strict=True)`` works. :func:`build_hf_model` takes a config
dict, file or folder and uses a local port when there is one; any other model
type needs the optional extra (``pip install 'wsl[transformers]'``) and is
built with ``transformers.AutoModel.from_config`` (or the class named in
``architectures``) -- no weight download, no remote code. ``WeightSpace.from_module``
traces them through ``torch.export`` (``torch.fx`` stops at their ``**kwargs``
decorators; see :mod:`wsl.space.trace`), their example inputs read from the
config (:mod:`wsl.archs.hf_inputs`). Loading the weights too is
:func:`wsl.hub.load_hf_model`; the weight space of a Hub checkpoint without
its weights is ``WeightSpace.from_pretrained`` (:mod:`wsl.hub.pretrained`).

The local ports stay beside ``transformers``: they need no optional package,
they keep the tensor names of the checkpoints on the Hub (``transformers`` 5
renames ViT's, e.g. ``layers.0.attention.k_proj``), and torch.fx traces them
without the seconds that ``torch.export`` and ``transformers`` take to import.
The generic rules give them the same tensors, groups, sites and edges as the
torch.fx path (tests/test_space_export.py).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsl.archs.bert import BertClassifier, BertConfig, BertModel
from wsl.archs.gpt2 import GPT2Config, GPT2LMHeadModel, GPT2Model
from wsl.archs.vit import ViTConfig, ViTForImageClassification, ViTModel
from wsl.errors import ArchitectureError, CheckpointError

__all__ = ["EXTRA_HINT", "build_hf_model", "from_hf_config", "local_model_types", "normalize_hf_state_dict",
           "transformers_available"]

EXTRA_HINT = "pip install 'wsl[transformers]'"

_LOCAL: dict[str, tuple[Any, dict[str, Callable[[Any], nn.Module]], str]] = {
    "bert": (BertConfig, {"BertModel": BertModel, "BertForSequenceClassification": BertClassifier}, "BertModel"),
    "vit": (ViTConfig, {"ViTModel": ViTModel, "ViTForImageClassification": ViTForImageClassification},
            "ViTModel"),
    "gpt2": (GPT2Config, {"GPT2Model": GPT2Model, "GPT2LMHeadModel": GPT2LMHeadModel}, "GPT2Model"),
}


def from_hf_config(config: dict[str, Any], base_model_only: bool = False) -> nn.Module:
    """Build a local model from a Hugging Face ``config.json`` dict.

    ``model_type`` selects BERT, ViT or GPT-2; the first entry of
    ``architectures`` selects the head (``BertModel``,
    ``BertForSequenceClassification``, ``ViTModel``,
    ``ViTForImageClassification``, ``GPT2Model``, ``GPT2LMHeadModel``). With
    ``base_model_only=True`` (or no ``architectures``) the trunk is built.
    Parameter names equal Hugging Face's, so checkpoints load strictly after
    :func:`normalize_hf_state_dict`.
    """
    if not isinstance(config, dict):
        raise ArchitectureError(f"from_hf_config: expected a config dict, got {type(config).__name__}")
    model_type = config.get("model_type")
    if model_type not in _LOCAL:
        if transformers_available():  # other model types: transformers builds them (no weights downloaded)
            return build_hf_model(config, prefer_local=False)
        raise ArchitectureError(
            f"from_hf_config: model_type {model_type!r} has no local implementation (local: "
            f"{', '.join(_LOCAL)}); install the 'transformers' extra to load it"
        )
    config_cls, classes, base = _LOCAL[model_type]
    archs = config.get("architectures") or [base]
    name = base if base_model_only else archs[0]
    if name not in classes:
        raise ArchitectureError(
            f"from_hf_config: architecture {name!r} (model_type {model_type!r}) is not available locally "
            f"(local: {', '.join(classes)}); pass base_model_only=True to build the {base} trunk, "
            "or install the 'transformers' extra"
        )
    return classes[name](config_cls.from_dict(config))


_IGNORED = re.compile(r"(^|\.)(embeddings\.position_ids|attn\.bias|attn\.masked_bias)$")


def normalize_hf_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], drop_unused: bool = False
) -> dict[str, torch.Tensor]:
    """Adapt a Hugging Face checkpoint's keys to ``model`` for a strict load.

    Renames legacy ``LayerNorm.gamma``/``beta`` to ``weight``/``bias``; adds or
    strips the base-model prefix (``bert.``, ``vit.``, ``transformer.``) when
    that makes a key match; drops legacy buffers (``embeddings.position_ids``,
    GPT-2 ``attn.bias``/``attn.masked_bias``); fills the tied ``lm_head.weight``
    of :class:`GPT2LMHeadModel` from ``transformer.wte.weight``. Keys that still
    match nothing are kept (so a strict load reports them) unless
    ``drop_unused`` -- e.g. to load only the encoder of a ``BertForMaskedLM``.
    """
    want = set(model.state_dict())
    prefix = getattr(model, "base_model_prefix", "") + "."
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        k = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key)) if key not in want else key
        if k not in want and prefix != "." and prefix + k in want:
            k = prefix + k
        elif k not in want and k.startswith(prefix) and k[len(prefix):] in want:
            k = k[len(prefix):]
        if k not in want and (_IGNORED.search(k) or drop_unused):
            continue
        out[k] = value
    if isinstance(model, GPT2LMHeadModel) and "lm_head.weight" not in out and "transformer.wte.weight" in out:
        out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def transformers_available() -> bool:
    """Whether the optional ``transformers`` package is importable."""
    return importlib.util.find_spec("transformers") is not None


def local_model_types() -> tuple[str, ...]:
    """``model_type`` values built by a local port (no ``transformers`` needed)."""
    return tuple(_LOCAL)


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

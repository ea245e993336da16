"""Loading Hugging Face (``transformers``-format) checkpoints: ``config.json`` + safetensors weights.

A checkpoint folder (or ``hf://`` model repository) holds ``config.json`` and
``model.safetensors`` (or ``model.safetensors.index.json`` and its shards, or
``pytorch_model.bin``). :func:`load_hf_model` resolves it, builds the module
from the config (:func:`wsl.archs.hf.build_hf_model`: a local port, else the
optional ``transformers`` extra) and loads the weights (safe loaders of
:mod:`wsl.io`, keys adapted by :func:`wsl.archs.hf.normalize_hf_state_dict`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from wsl.archs.hf import build_hf_model, normalize_hf_state_dict
from wsl.errors import CheckpointError
from wsl.io import check_state_dict, load_state_dict, local_path

__all__ = ["load_hf_model"]


def load_hf_model(source: str | os.PathLike[str], *, prefer_local: bool = True, strict: bool = True,
                  device: str = "cpu") -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """``(module in eval mode, state_dict)`` of a Hugging Face checkpoint folder or ``hf://`` repository."""
    path = Path(local_path(source, repo_type="model"))
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

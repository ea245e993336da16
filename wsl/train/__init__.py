"""Training meta-models: configs, the training loop, metrics, DDP helpers, the model registry.

* :mod:`wsl.train.config` -- :class:`Config` (YAML + ``key=value`` overrides), :func:`load_config`.
* :mod:`wsl.train.loop` -- :class:`Trainer`, :func:`train` (``wsl train``).
* :mod:`wsl.train.metrics` -- Kendall tau, R^2, MAE.
* :mod:`wsl.train.registry` -- model names -> constructors; :func:`load_predictor`.
* :mod:`wsl.train.distributed` -- torchrun / DistributedDataParallel helpers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Config", "Predictor", "Trainer", "kendall_tau", "load_config", "load_predictor", "mae", "r2_score",
           "regression_metrics", "train"]

_LAZY = {
    "Config": "wsl.train.config", "load_config": "wsl.train.config",
    "Trainer": "wsl.train.loop", "train": "wsl.train.loop",
    "kendall_tau": "wsl.train.metrics", "r2_score": "wsl.train.metrics", "mae": "wsl.train.metrics",
    "regression_metrics": "wsl.train.metrics",
    "Predictor": "wsl.train.registry", "load_predictor": "wsl.train.registry",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'wsl.train' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod), name)

"""Training meta-models: configs, the training loop, DDP helpers, the model registry, predictor files.

* :mod:`wsl.train.config` -- :class:`Config` (YAML + ``key=value`` overrides), :func:`load_config`.
* :mod:`wsl.train.loop` -- :class:`Trainer` (the loop; the generalization task's hooks in
  :mod:`wsl.train.generalization_task`).
* :mod:`wsl.train.run` -- :func:`train` (``wsl train``): the Trainer of ``cfg.task``
  (INR tasks: :mod:`wsl.train.inr_trainers`).
* :mod:`wsl.train.registry` -- model names -> constructors.
* :mod:`wsl.train.predictor` -- :class:`Predictor` directories: :func:`load_predictor`, ``save_predictor``.
* ``kendall_tau``, ``r2_score``, ``mae``, ``regression_metrics`` are those of :mod:`wsl.tasks.metrics`.
* :mod:`wsl.train.distributed` -- torchrun / DistributedDataParallel helpers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Config", "Predictor", "Trainer", "kendall_tau", "load_config", "load_predictor", "mae", "r2_score",
           "regression_metrics", "train"]

_LAZY = {
    "Config": "wsl.train.config", "load_config": "wsl.train.config",
    "Trainer": "wsl.train.loop", "train": "wsl.train.run",
    "kendall_tau": "wsl.tasks.metrics", "r2_score": "wsl.tasks.metrics", "mae": "wsl.tasks.metrics",
    "regression_metrics": "wsl.tasks.metrics",
    "Predictor": "wsl.train.predictor", "load_predictor": "wsl.train.predictor",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'wsl.train' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod), name)

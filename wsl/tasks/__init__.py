"""Weight-space learning tasks.

* :mod:`wsl.tasks.generalization` -- predict a network's test accuracy (or
  generalization gap) from its weights: targets, splits, inputs, augmentation.
* :mod:`wsl.tasks.statnn` -- StatNN features (:func:`statnn_features`).
* :mod:`wsl.tasks.baselines` -- StatNN and hyperparameters-only baselines (:func:`fit_baseline`).
* :mod:`wsl.tasks.metrics` -- Kendall tau, R^2, MAE (:func:`regression_metrics`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["BASELINES", "fit_baseline", "kendall_tau", "mae", "prepare_split", "r2_score", "regression_metrics",
           "select_rows", "statnn_features", "target_values"]

_LAZY = {
    "BASELINES": "wsl.tasks.baselines", "fit_baseline": "wsl.tasks.baselines",
    "statnn_features": "wsl.tasks.statnn",
    "prepare_split": "wsl.tasks.generalization", "select_rows": "wsl.tasks.generalization",
    "target_values": "wsl.tasks.generalization",
    "kendall_tau": "wsl.tasks.metrics", "r2_score": "wsl.tasks.metrics", "mae": "wsl.tasks.metrics",
    "regression_metrics": "wsl.tasks.metrics",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'wsl.tasks' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(mod), name)

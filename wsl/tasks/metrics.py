"""Regression metrics for generalization prediction: Kendall's tau-b, R^2, MAE.

All functions take 1-D array-likes (numpy, lists or torch tensors) of equal
length and return plain Python floats. Undefined values (fewer than two
points, constant inputs) are ``nan``; :func:`to_json` turns them into
``None`` for ``metrics.json``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from wsl.errors import WslError

__all__ = ["MetricError", "kendall_tau", "mae", "r2_score", "regression_metrics", "to_json"]


class MetricError(WslError):
    """Predictions and targets that cannot be compared."""


def _pair(pred: Any, true: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred.detach().cpu().numpy() if hasattr(pred, "detach") else pred, dtype=np.float64).reshape(-1)
    t = np.asarray(true.detach().cpu().numpy() if hasattr(true, "detach") else true, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise MetricError(f"{where}: predictions ({p.size}) and targets ({t.size}) differ in length")
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise MetricError(f"{where}: predictions or targets contain NaN/inf")
    return p, t


def kendall_tau(pred: Any, true: Any) -> float:
    """Kendall's rank correlation tau-b (ties handled as in ``scipy.stats.kendalltau``)."""
    from scipy.stats import kendalltau

    p, t = _pair(pred, true, "kendall_tau")
    if p.size < 2 or np.ptp(p) == 0 or np.ptp(t) == 0:
        return math.nan
    return float(kendalltau(p, t).statistic)


def r2_score(pred: Any, true: Any) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` (can be negative)."""
    p, t = _pair(pred, true, "r2_score")
    if p.size < 2:
        return math.nan
    ss_tot = float(((t - t.mean()) ** 2).sum())
    ss_res = float(((t - p) ** 2).sum())
    if ss_tot == 0.0:
        return math.nan
    return 1.0 - ss_res / ss_tot


def mae(pred: Any, true: Any) -> float:
    """Mean absolute error."""
    p, t = _pair(pred, true, "mae")
    return float(np.abs(p - t).mean()) if p.size else math.nan


def regression_metrics(pred: Any, true: Any) -> dict[str, float]:
    """``{"tau", "r2", "mae", "n"}`` for one split."""
    p, t = _pair(pred, true, "regression_metrics")
    return {"tau": kendall_tau(p, t), "r2": r2_score(p, t), "mae": mae(p, t), "n": int(p.size)}


def to_json(obj: Any) -> Any:
    """Recursively convert numpy/torch scalars to Python and non-finite floats to ``None``."""
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj

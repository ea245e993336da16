"""Prediction intervals with a stated level, and how often they hold.

Split-conformal calibration: with absolute residuals ``s_1..s_n`` of the
predictor on ``n`` calibration networks that played no part in its training or
selection, the half-width ``q`` is the ``k``-th smallest ``s_i`` with
``k = ceil((n + 1) * level)``. For a new network exchangeable with them,
``P(|prediction - truth| <= q) >= level`` (on average over calibration draws;
any one draw's coverage scatters around it by about
``sqrt(level (1 - level) / n)``). The validation split is a poor calibration
set: the meta-model was early-stopped and its seed chosen on it, so its
residuals are optimistically small, and it holds only ~10% of a zoo. An
independent calibration population -- the zoo's recipe with another seed --
fixes both.

Whatever the calibration set, the interval's coverage is then *measured* on
the predictor's test split (and on any further independent zoo) and stored
next to the nominal level, so the CLI, the API and the page can show both.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from wsl.errors import ConfigError


def conformal_half_width(residuals: np.ndarray, level: float) -> float:
    """The split-conformal half-width at ``level`` from absolute calibration residuals (see module docstring)."""
    if not 0.0 < level < 1.0:
        raise ConfigError(f"calibration level: expected a number in (0, 1), got {level}")
    s = np.sort(np.abs(np.asarray(residuals, dtype=np.float64)))
    s = s[np.isfinite(s)]
    n = len(s)
    k = math.ceil(round((n + 1) * level, 9))  # round: float error (0.9 / 0.1 = 9.000000000000002) must not move a rank
    if k > n:
        need = math.ceil(round(level / (1.0 - level), 9))
        raise ConfigError(f"calibration: {n} networks are too few for a {level:.0%} split-conformal interval; "
                          f"give at least {need} (hundreds for a stable one)")
    return float(s[k - 1])


def residuals(predictor: Any, rows: Any) -> np.ndarray:
    """``|prediction - truth|`` of ``predictor`` on the rows of a zoo view whose target is recorded."""
    pred = predictor.predict_zoo(rows)
    true = rows.column(predictor.target).astype(float)
    ok = np.isfinite(true)
    return np.abs(pred[ok] - true[ok])


def coverage(predictor: Any, rows: Any, half_width: float) -> float:
    """The fraction of ``rows`` whose truth lies in the (clipped) interval ``prediction ± half_width``.

    Clipping into [0, 1] never moves an end past an accuracy, so this equals ``mean(residual <= half_width)``."""
    return float(np.mean(residuals(predictor, rows) <= half_width))


def calibrate(predictor: Any, zoo: Any, level: float = 0.9, calibration: Any = None,
              independent: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``calibration`` block of a shipped predictor's config.

    ``zoo``: the training zoo (its ``test`` split measures coverage; its ``val`` split calibrates when no
    ``calibration`` zoo is given). ``calibration``: an independent zoo, every model's last checkpoint.
    ``independent``: ``{name: zoo}`` of further independent zoos on which coverage is measured too.
    """
    cal_rows = zoo.latest().split("val") if calibration is None else calibration.latest()
    res, method = residuals(predictor, cal_rows), "split-conformal"
    try:
        half = conformal_half_width(res, level)
    except ConfigError:
        if calibration is not None or not len(res):
            raise
        # a tiny validation split (test zoos): the largest residual, and the card says the level is not guaranteed
        half, method = float(np.max(res)), "largest residual (too few networks for split-conformal)"
    cov, n = {}, {}
    for name, rows in [("test", zoo.latest().split("test"))] + [(k, z.latest())
                                                                 for k, z in (independent or {}).items()]:
        res = residuals(predictor, rows)
        cov[name], n[name] = float(np.mean(res <= half)), int(len(res))
    out: dict[str, Any] = {"method": method, "level": level, "abs_residual": half,
                           "split": "val" if calibration is None else "calibration zoo",
                           "n_calibration": int(len(cal_rows)), "coverage": cov, "n": n,
                           "test_coverage": cov["test"], "n_test": n["test"]}
    if calibration is not None:
        out["calibration_zoo"] = _describe(calibration)
    for name, z in (independent or {}).items():
        out.setdefault("independent_zoos", {})[name] = _describe(z)
    return out


def _describe(zoo: Any) -> dict[str, Any]:
    card = zoo.card
    gen = (card.get("recipe") or {}).get("generation") or {}
    return {"name": card.get("name"), "recipe_seed": gen.get("seed"), "num_models": len(zoo.latest())}

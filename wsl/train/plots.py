"""Figures for training runs (matplotlib, ``Agg`` backend: no display needed).

matplotlib is optional (the ``plot`` extra). Without it every function here
logs one warning naming the figure it skips and returns None: a figure is a
by-product, so a run whose results are written must not fail for want of it.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from wsl.io.figures import pyplot

__all__ = ["plotting_available", "probe_grid", "scatter_plot"]

log = logging.getLogger("wsl.train")


def plotting_available(path: str | Path) -> bool:
    """True if matplotlib can draw; otherwise warns that ``path`` is skipped and returns False."""
    if pyplot() is not None:
        return True
    log.warning("wsl: warning: not drawing %s: matplotlib is not installed (pip install 'wsl[plot]'); "
                "everything else was written", path)
    return False


@contextmanager
def _figure(path: str | Path, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """``(fig, axes)`` of ``plt.subplots(**subplots)``; on a clean exit laid out and saved to ``path``; always closed."""
    plt = pyplot()
    fig, axes = plt.subplots(**subplots)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(Path(path))
    finally:
        plt.close(fig)


def probe_grid(x: Any, path: str | Path, *, classes: int = 10, per_class: int = 6, title: str = "") -> Path | None:
    """Probe inputs ``(P, C, H, W)`` (C = 1 or 3, values in [-1, 1]) as a grid: one column per target class
    ``i mod classes``, ``per_class`` rows. Returns None (draws nothing) for inputs that are not images, and
    (with a warning) without matplotlib."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 4 or a.shape[1] not in (1, 3) or min(a.shape[2:]) < 2 or classes < 1:
        return None
    if not plotting_available(path):
        return None
    rows = max(1, min(per_class, a.shape[0] // classes))
    cols = min(classes, a.shape[0])
    with _figure(path, nrows=rows, ncols=cols, figsize=(0.8 * cols, 0.8 * rows + (0.4 if title else 0)), dpi=120,
                 squeeze=False) as (fig, axes):
        for r in range(rows):
            for c in range(cols):
                ax = axes[r][c]
                img = (a[r * classes + c].transpose(1, 2, 0) + 1) / 2
                ax.imshow(img[..., 0] if img.shape[2] == 1 else img.clip(0, 1), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(str(c), fontsize=8)
        if title:
            fig.suptitle(title, fontsize=9)
    return Path(path)


def scatter_plot(pred: Any, true: Any, path: str | Path, *, title: str = "", target: str = "test accuracy",
                 metrics: dict[str, float] | None = None) -> Path | None:
    """Predicted vs true scatter with the identity line; the title shows tau and R^2 if given.
    None (and a warning) without matplotlib."""
    if not plotting_available(path):
        return None
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    t = np.asarray(true, dtype=np.float64).reshape(-1)
    with _figure(path, figsize=(4.8, 4.6), dpi=120) as (fig, ax):
        ax.scatter(t, p, s=8, alpha=0.6, edgecolors="none")
        if t.size:
            lo = float(min(t.min(), p.min()))
            hi = float(max(t.max(), p.max()))
            pad = 0.02 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.4", lw=1, ls="--")
        ax.set_xlabel(f"true {target}")
        ax.set_ylabel(f"predicted {target}")
        parts = [title] if title else []
        if metrics:
            tau, r2 = metrics.get("tau", math.nan), metrics.get("r2", math.nan)
            parts.append(f"Kendall τ = {_fmt(tau)}, R² = {_fmt(r2)} (n={t.size})")
        ax.set_title("\n".join(parts), fontsize=9)
        ax.grid(alpha=0.3)
    return Path(path)


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.3f}"

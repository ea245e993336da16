"""Figures of a NeuMeta run: the loss history and accuracy vs width (matplotlib, Agg backend).

``loss.png`` plots, per step, the task loss (cross-entropy at the width sampled
that step), the distillation loss when it is on, and the reconstruction loss
at full width, each as a running mean over 50 steps on a log scale, with the
sampled width ratio as faint dots on a second axis. ``accuracy.png`` plots
test accuracy against the width ratio, with the base network at 1 as a star.
matplotlib is optional: without it a warning is logged and nothing is drawn.
Files are written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from wsl.io.figures import pyplot_or_warn, save_png

log = logging.getLogger("wsl.hyper")

__all__ = ["plot_run"]


def _running_mean(v: np.ndarray, k: int = 50) -> np.ndarray:
    if len(v) == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    lo = np.maximum(np.arange(1, len(v) + 1) - k, 0)
    return (c[1:] - c[lo]) / (np.arange(1, len(v) + 1) - lo)


def plot_run(metrics: dict[str, Any], history: list[dict[str, float]], out: str | Path,
             title: str = "NeuMeta") -> list[Path]:
    """Write ``loss.png`` (if there is a history) and ``accuracy.png`` into ``out``; return the paths written."""
    plt = pyplot_or_warn(log, "loss.png and accuracy.png")
    if plt is None:
        return []
    out = Path(out)
    written = []
    if history:
        steps = np.array([h["step"] for h in history])
        fig, ax = plt.subplots(figsize=(6.5, 3.8))
        for key, colour in (("task", "tab:blue"), ("kd", "tab:purple"), ("rec", "tab:red")):
            v = np.array([h.get(key, 0.0) for h in history], dtype=float)
            if np.any(v > 0):
                ax.plot(steps, np.maximum(_running_mean(v), 1e-8), color=colour, label=key)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (running mean of 50)")
        twin = ax.twinx()
        twin.scatter(steps, [h.get("ratio", np.nan) for h in history], s=2, color="grey", alpha=0.25)
        twin.set_ylabel("sampled width ratio", color="grey")
        twin.set_ylim(0, 1.05)
        ax.legend(loc="upper right", fontsize=8)
        ax.set_title(f"{title}: losses")
        fig.tight_layout()
        save_png(fig, out / "loss.png")
        plt.close(fig)
        written.append(out / "loss.png")
    acc = metrics.get("accuracy") or {}
    if acc:
        ratios = sorted(acc, key=float)
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ax.plot([float(r) for r in ratios], [acc[r] for r in ratios], marker="o", label="NeuMeta sample")
        if "base_accuracy" in metrics:
            ax.scatter([1.0], [metrics["base_accuracy"]], marker="*", s=140, color="k", zorder=5, label="base")
        ax.set_xlabel("width ratio")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=8)
        ax.set_title(f"{title}: accuracy vs width")
        fig.tight_layout()
        save_png(fig, out / "accuracy.png")
        plt.close(fig)
        written.append(out / "accuracy.png")
    return written

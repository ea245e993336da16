"""Figures of rendered INRs: a grid of images (or signals), and before/after/target rows of edits.

matplotlib is optional (:mod:`wsl.io.figures`): without it each function logs one
warning naming the figure it skips and returns None. PNG files are written atomically.
Images are drawn in grey levels on the value range ``[-1, 1]`` of the zoos;
1-D signals as curves on that range.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["edit_grid", "render_grid"]

log = logging.getLogger("wsl.tasks")


def _pyplot(path: str | Path) -> Any:
    from wsl.io.figures import pyplot_or_warn

    return pyplot_or_warn(log, str(path))


def _draw(ax: Any, x: torch.Tensor, value_range: tuple[float, float]) -> None:
    x = x.detach().float().cpu()
    if x.dim() == 1:
        ax.plot(x.numpy(), lw=1.0, color="black")
        ax.set_ylim(value_range[0] - 0.05, value_range[1] + 0.05)
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        ax.imshow(x.numpy(), cmap="gray", vmin=value_range[0], vmax=value_range[1], interpolation="nearest")
        ax.axis("off")


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    from wsl.io.figures import save_png

    try:
        fig.tight_layout()
        return save_png(fig, path, dpi=100)
    finally:
        plt.close(fig)


def render_grid(images: torch.Tensor, path: str | Path, *, titles: Sequence[str] | None = None,
                cols: int | None = None, value_range: tuple[float, float] = (-1.0, 1.0),
                title: str = "") -> Path | None:
    """Renders ``(N, *shape)`` (``shape`` 1-D or 2-D) as a grid of ``cols`` columns (default ``ceil(sqrt(N))``)."""
    plt = _pyplot(path)
    if plt is None:
        return None
    n = int(images.shape[0])
    cols = max(1, min(n, cols or math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    wide = images.dim() == 2
    fig, axes = plt.subplots(rows, cols, figsize=(cols * (2.0 if wide else 1.3), rows * (1.2 if wide else 1.4)),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        _draw(ax, images[i], value_range)
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, plt, path)


def edit_grid(columns: dict[str, torch.Tensor], path: str | Path, *, row_labels: Sequence[str] | None = None,
              value_range: tuple[float, float] = (-1.0, 1.0), title: str = "") -> Path | None:
    """One column per entry of ``columns`` (e.g. before / edited / target), each ``(N, *shape)``; N rows."""
    plt = _pyplot(path)
    if plt is None:
        return None
    names = list(columns)
    n = int(next(iter(columns.values())).shape[0])
    fig, axes = plt.subplots(n, len(names), figsize=(len(names) * 1.3, n * 1.35), squeeze=False)
    for j, name in enumerate(names):
        for i in range(n):
            _draw(axes[i, j], columns[name][i], value_range)
            if i == 0:
                axes[i, j].set_title(name, fontsize=7)
        if row_labels is not None:
            for i in range(n):
                axes[i, 0].text(-0.1, 0.5, str(row_labels[i]), fontsize=7, rotation=90, ha="right", va="center",
                                transform=axes[i, 0].transAxes)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, plt, path)

"""Figures of a subspace report: per-layer spectra of the data beside the nulls (matplotlib, Agg backend).

Two kinds of figure, each with one panel per layer (one file per layer when
there are more than :data:`MAX_PANELS` layers):

* ``spectrum``: explained-variance ratio of direction ``r`` against ``r``
  (log y) for the data and every null;
* ``cumulative``: the fraction of variance in the first ``r`` directions.

With ``report["accuracy"]`` (:mod:`wsl.subspace.functional`) also
``accuracy.png`` (mean test accuracy, and the fraction of models >= 50% kept
within 1 point, against the compression ratio; subspace k, mean only,
float16, int8) and ``loo.png`` (histogram of the held-out accuracy change at
a few k).

Unaligned curves are solid, aligned ones dashed (any other view dotted), on the same axes. A null's
colour is the same everywhere. matplotlib is optional: without it nothing
is drawn and one warning names what was skipped.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from wsl.io.figures import pyplot_or_warn, save_png

__all__ = ["COLOURS", "MAX_PANELS", "accuracy_figures", "draw_curves", "pyplot", "report_figures"]

log = logging.getLogger("wsl.subspace")

MAX_PANELS = 12
COLOURS = {"data": "black", "init": "tab:blue", "mp": "tab:green", "shuffled": "tab:orange"}


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or None (with a warning) when matplotlib is missing."""
    return pyplot_or_warn(log, "the report's figures (report.json and summary.md are written)")


def _curves(entry: dict[str, Any]) -> dict[str, np.ndarray]:
    """Explained-variance curves of the data and each null of one report entry."""
    out = {"data": np.asarray(entry["explained_variance_ratio"], dtype=float)}
    for null, sub in entry.get("nulls", {}).items():
        if "explained_variance_ratio" in sub:
            out[null] = np.asarray(sub["explained_variance_ratio"], dtype=float)
    return out


def draw_curves(ax: Any, views: dict[str, dict[str, Any]], *, cumulative: bool, title: str) -> None:
    """One panel: every view's (``{"unaligned": entry, "aligned": entry}``) data and null curves."""
    for view, entry in views.items():
        style = {"unaligned": "-", "aligned": "--"}.get(view, ":")
        for key, evr in _curves(entry).items():
            if not len(evr) or (key == "mp" and view != "unaligned"):  # MP depends on the shape only: drawn once
                continue
            y = np.cumsum(evr) if cumulative else np.where(evr > 0, evr, np.nan)
            ranks = np.arange(1, len(evr) + 1)
            label = key if len(views) == 1 else f"{key} ({view})"
            ax.plot(ranks, y, style, color=COLOURS.get(key, "grey"), lw=1.6 if key == "data" else 1.1,
                    label=label)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("rank")
    if cumulative:
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("variance explained by the first r")
    else:
        ax.set_yscale("log")
        ax.set_ylabel("explained variance ratio")
    ax.grid(alpha=0.3)


def _layer_views(report: dict[str, Any], layer: str) -> dict[str, dict[str, Any]]:
    views = {"unaligned": report["layers"][layer]}
    aligned = report.get("aligned") or {}
    if layer in aligned.get("layers", {}):
        views["aligned"] = aligned["layers"][layer]
    return views


def _title(report: dict[str, Any], layer: str) -> str:
    entry = report["layers"][layer]
    return f"layer {layer} (P = {entry['n_params']}, N = {entry['n_models']})"


def report_figures(report: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Draw ``spectrum.png`` and ``cumulative.png`` (or ``*_<layer>.png`` per layer) into ``out_dir``."""
    plt = pyplot()
    if plt is None:
        return []
    out = Path(out_dir)
    layers = list(report["layers"])
    written: list[Path] = []
    for kind in ("spectrum", "cumulative"):
        groups = [layers] if len(layers) <= MAX_PANELS else [[layer] for layer in layers]
        for group in groups:
            cols = min(4, len(group))
            rows = math.ceil(len(group) / cols)
            fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.3 * rows), squeeze=False)
            try:
                for ax, layer in zip(axes.flat, group):
                    draw_curves(ax, _layer_views(report, layer), cumulative=kind == "cumulative",
                                title=_title(report, layer))
                for ax in list(axes.flat)[len(group):]:
                    ax.set_visible(False)
                axes.flat[0].legend(fontsize=7)
                fig.suptitle(f"{Path(str(report['source'])).name}: {kind} of the data vs the nulls", fontsize=10)
                fig.tight_layout()
                name = kind if len(groups) == 1 else f"{kind}_{re.sub(r'[^A-Za-z0-9_.-]', '_', group[0])}"
                written.append(save_png(fig, out / f"{name}.png"))
            finally:
                plt.close(fig)
    acc = report.get("accuracy")
    if acc and "skipped" not in acc:
        written += accuracy_figures(acc, out, title=Path(str(report["source"])).name)
    return written


_STYLES = {"subspace": "o-", "mean only": "x", "float16": "^", "int8": "v"}


def accuracy_figures(acc: dict[str, Any], out_dir: str | Path, *, title: str = "",
                     show: tuple[int, ...] = (0, 1, 4, 16, 64)) -> list[Path]:
    """Draw ``accuracy.png`` and, with a leave-one-out, ``loo.png`` from ``report["accuracy"]``."""
    plt = pyplot()
    if plt is None:
        return []
    out, written = Path(out_dir), []
    good = f"models >= {100 * acc['good_threshold']:.0f}%"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    try:
        for ax, key, label in ((axes[0], "accuracy", "mean test accuracy"),
                               (axes[1], "within_1pt_good", f"{good}: fraction within 1 point")):
            for method, style in _STYLES.items():
                pts = sorted((m["ratio"], m[key]) for m in acc["methods"] if m["method"] == method)
                if pts:
                    ax.plot(*zip(*pts), style, label=method, markersize=7)
            if key == "accuracy":
                ax.axhline(acc["original_accuracy"], color="gray", lw=1, ls=":", label="original")
            ax.set_xscale("log")
            ax.set_xlabel("compression ratio (original bytes / stored bytes)")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{title}: accuracy retained vs compression ({acc['n_models']} models, "
                     f"{acc['dataset']} test split)", fontsize=10)
        fig.tight_layout()
        written.append(save_png(fig, out / "accuracy.png"))
    finally:
        plt.close(fig)
    loo = acc.get("loo")
    if not loo:
        return written
    fig, ax = plt.subplots(figsize=(6, 4))
    try:
        bins = np.linspace(-1, 0.1, 45)
        for k in [k for k in show if str(k) in loo["per_k"]] or list(loo["per_k"])[:4]:
            d = np.clip(np.asarray(loo["per_k"][str(k)]["diffs"], dtype=float), -1, 0.1)
            ax.hist(d, bins=bins, histtype="step", lw=1.6, label=f"k={k}")
        ax.set_xlabel("held-out model: reconstructed - original test accuracy")
        ax.set_ylabel("models")
        ax.set_title(f"{title}: leave-one-out ({loo['models']} held-out models, {loo['good_models']} at "
                     f"{good[7:]})", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(save_png(fig, out / "loo.png"))
    finally:
        plt.close(fig)
    return written

"""Writing a subspace report: ``report.json``, ``summary.md`` and the figures.

``report.json`` (format ``"wsl.subspace.report/1"``), as :func:`wsl.subspace.analyze.analyze` returns it::

    format, source, info, n_models, settings {nulls, aligned, split_half, modes, block, seed, epochs, split, limit},
    nulls {init: {description, n_models} | {skipped}, mp: {description}, shuffled: {description}},
    tensors {NAME: ENTRY + {layer, modes?}},
    layers  {LAYER: ENTRY + {tensors: [NAME...]}},
    aligned? {alignment {...}, init_alignment? {...}, tensors, layers} | {skipped: reason},
    accuracy? ACCURACY | {skipped: reason}          (analyze(accuracy=True); wsl.subspace.functional)
    seconds

    ACCURACY = {dataset, split, n_test, n_models, nonfinite_models_left_out, architectures [..], fit,
                good_threshold, ks [..], original_bytes, original_accuracy, good_models, seconds,
                methods [{method: float16|int8|"mean only"|subspace, param (k), bytes, ratio, accuracy,
                          mean_diff, median_diff, within_1pt, good_models, within_1pt_good}],
                loo? {method, models, rows [..], seed, seconds, original_accuracy, originals [..], good_models,
                      per_k {K: {accuracy, mean_diff, median_diff, within_1pt, mean_diff_good, within_1pt_good,
                                 diffs [..], in_sample_mean_diff}}}}

    ENTRY = SPECTRUM + {
      nulls     {init|mp|shuffled: SPECTRUM (mp adds sigma2) | {skipped: reason}},
      excess    {NULL: {k90, at_1, at_k90, "rank_for_0.9"}},
      split_half? {k, overlap, cosines [..], n_halves [a, b], random, nulls {init|shuffled: {k, overlap, cosines}}}}
    SPECTRUM = {n_models, n_params, shape, total_variance, explained_variance_ratio [rank 1 first],
                effective_rank, rank_for {"0.5", "0.9", "0.99"}}
    modes = {left|right: {dim, explained_variance_ratio, effective_rank, rank_for,
                          nulls {init|shuffled: same | {skipped}}} | {skipped: reason}}

``summary.md`` has one short table per layer (data vs each null: effective
rank, rank for 90%, variance explained by the top direction, split-half
overlap), aligned rows beside unaligned ones, and with ``accuracy`` one
table of accuracy kept vs compression ratio (with the leave-one-out beside).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from wsl.io import atomic_write

__all__ = ["accuracy_table", "compact_summary", "layer_table", "summary_markdown", "write_report"]

_COLUMNS = ("data", "init", "mp", "shuffled")


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, int):
        return str(x)
    return f"{x:.{digits}g}"


def _cell(entry: dict[str, Any], key: str, what: str) -> str:
    sub = entry if key == "data" else entry.get("nulls", {}).get(key)
    if sub is None:
        return ""
    if "skipped" in sub:
        return "skipped"
    if what == "effective_rank":
        return _fmt(sub["effective_rank"], 2)
    if what == "rank90":
        return str(sub["rank_for"]["0.9"])
    evr = sub["explained_variance_ratio"]
    return _fmt(evr[0] if evr else 0.0)


def _overlap_cell(entry: dict[str, Any], key: str) -> str:
    sh = entry.get("split_half")
    if not sh:
        return ""
    sub = sh if key == "data" else sh.get("nulls", {}).get(key)
    if sub is None:
        return "–"
    if "skipped" in sub:
        return "skipped"
    return _fmt(sub.get("overlap"))


def layer_table(entries: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows (header first) for one layer; ``entries``: ``{"": entry}`` or ``{"aligned": entry, ...}``."""
    rows = ["| | " + " | ".join(_COLUMNS) + " |", "|---|" + "---:|" * len(_COLUMNS)]
    for view, entry in entries.items():
        pre = f"{view}: " if view else ""
        rows.append(f"| {pre}effective rank | " + " | ".join(_cell(entry, c, "effective_rank") for c in _COLUMNS) + " |")
        rows.append(f"| {pre}rank for 90% | " + " | ".join(_cell(entry, c, "rank90") for c in _COLUMNS) + " |")
        rows.append(f"| {pre}explained by top-1 | " + " | ".join(_cell(entry, c, "top1") for c in _COLUMNS) + " |")
        if entry.get("split_half"):
            k = entry["split_half"]["k"]
            rand = _fmt(entry["split_half"]["random"])
            rows.append(f"| {pre}split-half overlap (k = {k}; random k/P = {rand}) | "
                        + " | ".join(_overlap_cell(entry, c) for c in _COLUMNS) + " |")
    return rows


def _compact_entry(entry: dict[str, Any]) -> dict[str, Any]:
    views = {"data": entry, **{k: v for k, v in entry.get("nulls", {}).items() if "skipped" not in v}}
    out: dict[str, Any] = {
        "n_params": entry["n_params"],
        "effective_rank": {k: v["effective_rank"] for k, v in views.items()},
        "rank_for_0.9": {k: v["rank_for"]["0.9"] for k, v in views.items()},
        "top1": {k: (v["explained_variance_ratio"] or [0.0])[0] for k, v in views.items()}}
    sh = entry.get("split_half")
    if sh:
        out["split_half"] = {"k": sh["k"], "data": sh["overlap"], "random": sh["random"],
                             **{k: v.get("overlap") for k, v in sh["nulls"].items() if "skipped" not in v}}
    return out


def compact_summary(report: dict[str, Any]) -> dict[str, Any]:
    """Per layer: effective rank, rank for 90% and top-1 share of the data and each null, split-half overlaps."""
    out: dict[str, Any] = {"source": report["source"], "n_models": report["n_models"],
                           "seconds": report.get("seconds"),
                           "layers": {k: _compact_entry(v) for k, v in report["layers"].items()}}
    aligned = report.get("aligned")
    if aligned is not None:
        out["aligned"] = ({"skipped": aligned["skipped"]} if "skipped" in aligned else
                          {"layers": {k: _compact_entry(v) for k, v in aligned["layers"].items()}})
    acc = report.get("accuracy")
    if acc is not None:
        loo = acc.get("loo", {}).get("per_k", {})
        out["accuracy"] = {"skipped": acc["skipped"]} if "skipped" in acc else {
            "original_accuracy": acc["original_accuracy"],
            "methods": [{"method": m["method"], "k": m["param"], "ratio": m["ratio"], "accuracy": m["accuracy"],
                         "mean_diff": m["mean_diff"],
                         "loo_mean_diff": loo[str(m["param"])]["mean_diff"] if str(m["param"]) in loo else None}
                        for m in acc["methods"]]}
    return out


def accuracy_table(acc: dict[str, Any]) -> list[str]:
    """Markdown lines for ``report["accuracy"]``: one row per method, the leave-one-out beside each k."""
    if "skipped" in acc:
        return [f"Accuracy check skipped: {acc['skipped']}"]
    pct = lambda v: "–" if v is None or v != v else f"{100 * v:+.2f}"  # noqa: E731
    share = lambda v: "–" if v is None or v != v else f"{100 * v:.0f}%"  # noqa: E731
    good = f">= {100 * acc['good_threshold']:.0f}%"
    loo = acc.get("loo", {}).get("per_k", {})
    lines = [f"{acc['n_models']} models on the {acc['dataset']} test split ({acc['n_test']} samples); original mean "
             f"accuracy {100 * acc['original_accuracy']:.2f}%, {acc['good_models']} models {good}; "
             f"non-finite models left out: {acc['nonfinite_models_left_out']}. Basis: {acc['fit']}.", ""]
    if loo:
        lines += [f"Leave-one-out: {acc['loo']['models']} held-out rows (seed {acc['loo']['seed']}), "
                  f"{acc['loo']['method']}.", ""]
    lines += ["| method | k | ratio | mean acc. | mean change (pts) | within 1 pt | within 1 pt (" + good + ") "
              "| LOO mean change (pts) | LOO within 1 pt |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in acc["methods"]:
        lo = loo.get(str(m["param"])) if m["param"] is not None else None
        loo_cells = f"{pct(lo['mean_diff'])} | {share(lo['within_1pt'])}" if lo else " | "
        lines.append(f"| {m['method']} | {'' if m['param'] is None else m['param']} | {m['ratio']:.2f} "
                     f"| {100 * m['accuracy']:.2f} | {pct(m['mean_diff'])} | {share(m['within_1pt'])} "
                     f"| {share(m['within_1pt_good'])} | {loo_cells} |")
    return lines


def summary_markdown(report: dict[str, Any]) -> str:
    """The short Markdown summary of a report (one table per layer)."""
    s = report["settings"]
    lines = [f"# Subspace analysis of {report['source']}", "",
             f"{report['n_models']} models; nulls: {', '.join(s['nulls']) or 'none'}; "
             f"alignment: {s['aligned']}; {report.get('seconds', 0):.1f} s.", ""]
    for null, d in report["nulls"].items():
        lines.append(f"- **{null}**: " + (f"skipped ({d['skipped']})" if "skipped" in d else d["description"]))
    aligned = report.get("aligned")
    if aligned is not None:
        if "skipped" in aligned:
            lines.append(f"- **aligned**: skipped ({aligned['skipped']})")
        else:
            a = aligned["alignment"]
            lines.append(f"- **aligned**: {a['method']}; {a['barycentre_iterations']} barycentre iterations, "
                         f"{a['seconds']:.1f} s; mean distance to the barycentre "
                         f"{a['mean_distance_before']:.4g} -> {a['mean_distance_after']:.4g}")
    lines += ["", "Columns: the data and each null. The split-half row gives the mean cos² of the principal "
              "angles between the top-k subspaces of two disjoint halves of the models (k: the data's rank for 90%, "
              "at most 32); two random k-dimensional subspaces of R^P give k/P.", ""]
    for layer, entry in report["layers"].items():
        lines.append(f"## layer `{layer}` (P = {entry['n_params']}; tensors: "
                     + ", ".join(f"`{t}`" for t in entry["tensors"]) + ")")
        lines.append("")
        views = {"": entry}
        if aligned is not None and layer in aligned.get("layers", {}):
            views = {"unaligned": entry, "aligned": aligned["layers"][layer]}
        lines += layer_table(views)
        lines.append("")
    if "accuracy" in report:
        lines += ["## accuracy kept vs compression", ""] + accuracy_table(report["accuracy"]) + [""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | os.PathLike[str], *, figures: bool = True) -> dict[str, Any]:
    """Write ``report.json``, ``summary.md`` and (``figures``) the PNG plots into ``out_dir``; returns the paths."""
    from wsl.subspace.plots import report_figures

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    with atomic_write(out / "summary.md") as tmp:
        tmp.write_text(summary_markdown(report) + "\n")
    pngs = report_figures(report, out) if figures else []
    return {"report": out / "report.json", "summary": out / "summary.md", "figures": pngs}

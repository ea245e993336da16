"""A zoo's summary: splits, architectures and metric quantiles from its card and metadata (no weights read).

Shared by ``wsl zoo info`` and the dataset cards of :mod:`wsl.hub.cards`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from wsl.zoo.compressed import compressed_summary
from wsl.zoo.format import METRICS, ROW_FIELDS, SPLIT_NAMES

__all__ = ["summarize"]


def _quantiles(values: np.ndarray) -> dict[str, Any]:
    v = values[~np.isnan(values)]
    out: dict[str, Any] = {"count": int(v.size), "null": int(values.size - v.size)}
    if v.size:
        q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
        out.update(min=float(q[0]), q25=float(q[1]), median=float(q[2]), q75=float(q[3]), max=float(q[4]),
                   mean=float(v.mean()))
    return out


def _disk_bytes(root: Any, card: dict[str, Any]) -> int:
    total = sum(s["bytes"] for s in card["shards"])
    total += sum(b["bytes"] for b in card.get("compression", {}).get("bases", {}).values())
    for name in ("zoo.json", "metadata.jsonl"):
        try:
            total += os.path.getsize(root / name)
        except OSError:
            pass
    return total


def summarize(zoo: Any) -> dict[str, Any]:
    """What a zoo holds, read from its card and metadata only (no weights): the ``wsl zoo info --json`` object.

    Keys: ``path``, ``format``, ``name``, ``version``, ``description``,
    ``dataset``, ``num_rows``, ``num_models``, ``num_shards``, ``splits`` (rows,
    models, fraction per split), ``architectures`` (id, kind, parameters,
    tensors, rows, models, shards), ``metrics`` (count, nulls and quantiles of
    every numeric metadata field), ``disk_bytes`` and ``compression`` (None for
    a native zoo; see :func:`wsl.zoo.compressed.compressed_summary`).
    """
    card = zoo.card
    rows = list(zoo.iter_metadata())
    splits = {}
    for name in SPLIT_NAMES:
        part = [r for r in rows if r["split"] == name]
        splits[name] = {"rows": len(part), "models": len({r["model_id"] for r in part}),
                        "fraction": card["splits"][name]}
    archs = []
    for aid, entry in card["architectures"].items():
        part = [r for r in rows if r["arch"] == aid]
        arch = entry["arch"]
        kind = arch.get("name") if arch.get("kind") == "builtin" else f"sequential ({len(arch.get('layers', []))} layers)"
        archs.append({"id": aid, "kind": kind, "num_parameters": entry["num_parameters"],
                      "num_tensors": len(entry["tensors"]), "rows": len(part),
                      "models": len({r["model_id"] for r in part}),
                      "shards": sum(1 for s in card["shards"] if s["arch"] == aid)})
    extra_fields = sorted({k for r in rows for k in r if k not in ROW_FIELDS})
    metrics = {}
    for name in ("epoch", *METRICS, *extra_fields):
        values = [r.get(name) for r in rows]
        if not values or not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                                 for v in values) or all(v is None for v in values):
            continue
        metrics[name] = _quantiles(np.array([np.nan if v is None else v for v in values], dtype=np.float64))
    return {"path": str(zoo.root), "format": card["format"], "name": card["name"], "version": card["version"],
            "description": card["description"], "dataset": card["dataset"], "num_rows": len(rows),
            "num_models": card["num_models"], "num_shards": len(card["shards"]), "splits": splits,
            "architectures": archs, "metrics": metrics, "disk_bytes": _disk_bytes(zoo.root, card),
            "compression": compressed_summary(card)}

"""Confounders of a LoRA collection: adapters that share (nearly) the same ``A``, or the same ``B``.

Many published adapter collections were trained from one random ``A``
initialisation (one seed for every task). LoRA's ``A`` moves little in
training, so every update ``dW_i = s B_i A_i ~ s B_i A_0`` then lies in the
row space of one ``A_0``: the collection has a shared ``r``-dimensional
right subspace by construction, and a "universal subspace" found in it says
nothing about the tasks. This module measures it.

For factor ``F`` (``A`` or ``B``), target ``m`` and adapters ``i, j``, with
``f_i = vec(F_i^m)`` the raw (uncentred) flattened factor::

    cos_ij^m = <f_i, f_j> / (|f_i| |f_j|)

and *overall* the same on the concatenation over targets (the summed Gram
matrices). Independent random factors of ``P`` entries give ``|cos| ~
1/sqrt(P)`` (reported as ``random_cos_scale``). Adapters ``i, j`` are joined
when ``cos_ij > threshold``; the connected components of that graph with two
or more members are the *clusters*, and ``fraction_in_clusters`` is the share
of adapters in one. The same at the lower level ``related`` (default 0.5,
far above ``random_cos_scale`` for any real factor) gives
``fraction_related``: adapters whose ``A`` kept a strong trace of a shared
init that training moved. Pairs whose factor shapes differ (different ranks) have
no cosine (NaN) and are never joined. The Gram matrices are summed over row
blocks of the factors, so memory is ``O(N^2 + N * block)``.

A non-zero ``fraction_in_clusters`` of ``A`` (or a ``fraction_related``
above it) raises a :class:`ConfounderWarning` (and is listed in ``warnings``): the shared part of
any ``dW`` subspace found in those adapters is explained by their shared init.
Near-identical ``B`` (which starts at zero) points to duplicated adapters.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from wsl.errors import WslError
from wsl.subspace.adapter_collection import AdapterCollection, open_adapters
from wsl.subspace.stacks import BLOCK

__all__ = ["ConfounderReport", "ConfounderWarning", "adapter_confounders", "clusters", "factor_gram"]


class ConfounderWarning(UserWarning):
    """An adapter collection whose factors are near-identical across adapters (shared init, duplicates)."""


def factor_gram(col: AdapterCollection, module: str, which: str, block: int = BLOCK) -> torch.Tensor:
    """The ``N x N`` raw Gram matrix ``<f_i, f_j>`` of one factor of one target (NaN between different shapes)."""
    n = len(col)
    g = torch.full((n, n), float("nan"), dtype=torch.float64)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, ad in enumerate(col.adapters):
        t = ad.targets[module]
        groups.setdefault(t.a_shape if which == "A" else t.b_shape, []).append(i)
    for shape, idx in groups.items():
        per_row = math.prod(shape[1:])
        rows = max(1, block // max(per_row, 1))
        acc = torch.zeros((len(idx), len(idx)), dtype=torch.float64)
        for r0 in range(0, shape[0], rows):
            r1 = min(r0 + rows, shape[0])
            x = torch.stack([col.adapters[i].factor_rows(module, which, r0, r1, torch.float64) for i in idx])
            acc += x @ x.T
        sel = torch.tensor(idx)
        g[sel.unsqueeze(1), sel.unsqueeze(0)] = acc
    return g


def _cosine(g: torch.Tensor) -> torch.Tensor:
    d = torch.diagonal(g).clamp_min(0).sqrt()
    cos = g / (d.unsqueeze(0) * d.unsqueeze(1))
    cos[~torch.isfinite(cos)] = float("nan")  # zero factors (an untrained B) have no direction
    return cos


def clusters(cos: torch.Tensor, threshold: float) -> list[list[int]]:
    """Connected components (two or more members) of the graph ``cos_ij > threshold``, largest first."""
    n = cos.shape[0]
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    ii, jj = torch.nonzero(torch.triu(torch.nan_to_num(cos, nan=-2.0) > threshold, diagonal=1), as_tuple=True)
    for i, j in zip(ii.tolist(), jj.tolist()):
        parent[root(i)] = root(j)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(root(i), []).append(i)
    return sorted((c for c in comps.values() if len(c) > 1), key=lambda c: (-len(c), c[0]))


def _stats(cos: torch.Tensor, threshold: float, related: float, ids: Sequence[str], n_params: int) -> dict[str, Any]:
    n = cos.shape[0]
    off = cos[~torch.eye(n, dtype=torch.bool)]
    off = off[torch.isfinite(off)]
    comps = clusters(cos, threshold)
    in_clusters = sum(len(c) for c in comps)
    out: dict[str, Any] = {"n_params": n_params, "random_cos_scale": 1.0 / math.sqrt(max(n_params, 1)),
                           "n_pairs": int(off.numel()) // 2,
                           "fraction_in_clusters": in_clusters / n if n else 0.0,
                           "fraction_related": sum(len(c) for c in clusters(cos, related)) / n if n else 0.0,
                           "n_clusters": len(comps), "largest_cluster": max((len(c) for c in comps), default=0),
                           "clusters": [[ids[i] for i in c] for c in comps]}
    if off.numel():
        out.update(mean_cos=float(off.mean()), median_cos=float(off.median()), max_cos=float(off.max()),
                   min_cos=float(off.min()), fraction_pairs_above=float((off > threshold).double().mean()))
    return out


@dataclass
class ConfounderReport:
    """``summary`` (JSON numbers per factor, overall and per target; ``warnings``) and the cosine matrices."""

    summary: dict[str, Any]
    cosine: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return list(self.summary["warnings"])

    def to_dict(self) -> dict[str, Any]:
        return self.summary

    def markdown(self) -> str:
        """A short table: per factor, overall and per target, the cosine statistics and the cluster fraction."""
        lines = ["| factor | target | params | mean cos | median cos | max cos | random scale | near-identical | "
                 "related | clusters |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for which in self.summary["factors"]:
            part = self.summary[which]
            for target, s in [("(all)", part["overall"]), *part["modules"].items()]:
                lines.append(f"| {which} | {target} | {s['n_params']} | {s.get('mean_cos', float('nan')):.3f} | "
                             f"{s.get('median_cos', float('nan')):.3f} | {s.get('max_cos', float('nan')):.3f} | "
                             f"{s['random_cos_scale']:.3f} | {s['fraction_in_clusters']:.2f} | "
                             f"{s['fraction_related']:.2f} | {s['n_clusters']} |")
        lines += [f"\n> warning: {w}" for w in self.summary["warnings"]]
        return "\n".join(lines)


def adapter_confounders(collection: Any, threshold: float = 0.99, *, related: float = 0.5,
                        factors: Sequence[str] = ("A", "B"), block: int = BLOCK, warn: bool = True
                        ) -> ConfounderReport:
    """Pairwise cosines of the adapters' ``A`` (and ``B``) per target and overall, and near-identical clusters.

    ``collection``: an :class:`AdapterCollection`, a Source opened from
    adapters, or what :func:`~wsl.subspace.adapter_collection.open_adapters` accepts.
    """
    col = _collection(collection)
    if not -1.0 <= related <= threshold <= 1.0:
        raise WslError(f"need -1 <= related <= threshold <= 1 (cosines), got related={related}, "
                       f"threshold={threshold}")
    bad = [f for f in factors if f not in ("A", "B")]
    if bad:
        raise WslError(f"unknown factor {bad[0]!r}; choose 'A' and/or 'B'")
    summary: dict[str, Any] = {"threshold": threshold, "related": related, "n_adapters": len(col),
                               "ids": list(col.ids), "factors": list(factors), "warnings": []}
    cosine: dict[str, dict[str, torch.Tensor]] = {}
    for which in factors:
        total = torch.zeros((len(col), len(col)), dtype=torch.float64)
        mods, cos_by = {}, {}
        n_total = 0
        for m in col.modules:
            g = factor_gram(col, m, which, block)
            total += g
            t = col.adapters[0].targets[m]
            n_params = math.prod(t.a_shape if which == "A" else t.b_shape)
            n_total += n_params
            cos_by[m] = _cosine(g)
            mods[m] = _stats(cos_by[m], threshold, related, col.ids, n_params)
        cos_by["(all)"] = _cosine(total)
        overall = _stats(cos_by["(all)"], threshold, related, col.ids, n_total)
        summary[which] = {"overall": overall, "modules": mods}
        cosine[which] = cos_by
    summary["warnings"] = _warnings(summary)
    if warn:
        for w in summary["warnings"]:
            warnings.warn(w, ConfounderWarning, stacklevel=2)
    return ConfounderReport(summary, cosine)


def _warnings(summary: dict[str, Any]) -> list[str]:
    out = []
    n, threshold, related = summary["n_adapters"], summary["threshold"], summary["related"]
    if "A" in summary:
        s = summary["A"]["overall"]
        if s["fraction_in_clusters"] > 0:
            out.append(f"{round(s['fraction_in_clusters'] * n)} of {n} adapters ({s['fraction_in_clusters']:.0%}) "
                       f"fall in {s['n_clusters']} cluster(s) of near-identical A (cos > {threshold}; largest "
                       f"{s['largest_cluster']}): a shared A initialisation. Their updates dW = s B A share A's "
                       "row space by construction, so a shared subspace found in them is not evidence of "
                       "universality")
        if s["fraction_related"] > s["fraction_in_clusters"]:
            out.append(f"{round(s['fraction_related'] * n)} of {n} adapters have an A with cos > {related} to "
                       f"another adapter's (independent inits give |cos| ~ {s['random_cos_scale']:.3f}): a shared "
                       "A initialisation that training moved is likely; their dW row spaces overlap far more than "
                       "independent adapters' would")
    if "B" in summary:
        s = summary["B"]["overall"]
        if s["fraction_in_clusters"] > 0:
            out.append(f"{round(s['fraction_in_clusters'] * n)} of {n} adapters have near-identical B "
                       f"(cos > {threshold}): duplicated adapters?")
        if s["n_pairs"] == 0 and n > 1:
            out.append("B has no direction in some adapters (all zero): untrained adapters?")
    return out


def _collection(obj: Any) -> AdapterCollection:
    if isinstance(obj, AdapterCollection):
        return obj
    info = getattr(obj, "info", None)
    if isinstance(info, dict) and isinstance(info.get("collection"), AdapterCollection):
        return info["collection"]
    if isinstance(obj, (str, os.PathLike, list, tuple)):
        return open_adapters(obj)
    raise WslError(f"adapter_confounders needs an adapter collection, a Source of adapters or adapter paths, "
                   f"not {type(obj).__name__}")

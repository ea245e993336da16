"""``analyze``: a zoo's per-tensor and per-layer spectra beside three nulls, sharedness, modes, alignment.

For every tensor ``t`` (N models, ``P_t`` entries) the report gives the
spectrum of the centred ``N x P_t`` stack (:mod:`wsl.subspace.spectrum`,
through its ``N x N`` Gram matrix, read block by block) and the same numbers
for each null (:mod:`wsl.subspace.nulls`): ``init`` (the recipe's
initialisation), ``mp`` (Marchenko-Pastur at the matched shape and
variance) and ``shuffled`` (every model's entries permuted). The *excess*
over a null is what the data explain beyond it::

    excess_k = EV_data(k) - EV_null(k)        at k = 1 and k = k90 = rank_for_data(0.9)
    rank gap = rank_for_null(0.9) - k90       (> 0: the data need fewer directions)

with ``EV(k)`` the fraction of variance in the first k directions.

A *layer* (all tensors of one module, :func:`wsl.subspace.stacks.layer_of`)
is the concatenation of its tensors' entries; its centred Gram matrix is
the sum of theirs, so layer spectra cost no extra pass. Split-half
sharedness (:mod:`wsl.subspace.halves`) and the mode-wise view
(:mod:`wsl.subspace.modes`) come beside. With ``aligned``, the trained and
the init stacks are also aligned to their barycentres
(:mod:`wsl.subspace.aligned`) and analysed again (``report["aligned"]``).

Memory per tensor is ``O(N^2 + N * block)`` for the spectra (never the
``N x P`` matrix of a large tensor); alignment alone holds the aligned
models in memory. :mod:`wsl.subspace.report` documents and writes the
report.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from wsl.errors import ConfigError
from wsl.subspace.halves import MAX_K, half_cosines, split_halves
from wsl.subspace.modes import mode_grams, mode_summary
from wsl.subspace.nulls import NULLS, mp_spectrum
from wsl.subspace.sources import Source, open_source
from wsl.subspace.spectrum import Spectrum, grams
from wsl.subspace.stacks import BLOCK, ShuffledStack, Stack, layer_of

__all__ = ["REPORT_FORMAT", "analyze"]

REPORT_FORMAT = "wsl.subspace.report/1"
_STACK_NULLS = ("init", "shuffled")
_DESCRIBE = {"mp": "Marchenko-Pastur law at the data's shape (N models, P entries) and per-entry variance",
             "shuffled": "each model's entries of each tensor permuted independently (seeded, within blocks)"}


def _spec(name: str, shape: Sequence[int], g: torch.Tensor) -> Spectrum:
    """The spectrum of a centred Gram matrix (eigenvalues only)."""
    n = int(g.shape[0])
    lam = torch.linalg.eigvalsh((g + g.T) / 2).flip(0)
    r = max(min(n - 1, math.prod(shape)), 0)
    return Spectrum(name, tuple(int(s) for s in shape), n, lam[:r].clamp_min(0).cpu())


def _mp(data: Spectrum, cache: dict[tuple[int, int], Spectrum]) -> Spectrum:
    """:func:`mp_spectrum`, computed once per shape: its eigenvalues are ``sigma^2`` times a shape-only curve."""
    ref = cache.get((data.n_models, data.n_params))
    if ref is None or not ref.extra["sigma2"] > 0:
        ref = cache[(data.n_models, data.n_params)] = mp_spectrum(data)
        return ref
    sigma2 = float(data.eigenvalues.sum()) / max((data.n_models - 1) * data.n_params, 1)
    return Spectrum(data.name, data.shape, data.n_models, ref.eigenvalues * (sigma2 / ref.extra["sigma2"]),
                    extra={"sigma2": sigma2})


def _excess(data: Spectrum, null: Spectrum) -> dict[str, Any]:
    k90 = data.rank_for(0.9)
    return {"k90": k90, "at_1": data.explained_at(1) - null.explained_at(1),
            "at_k90": data.explained_at(k90) - null.explained_at(k90),
            "rank_for_0.9": null.rank_for(0.9) - k90}


class _Run:
    """One analysis of a trained stack and its null stacks (unaligned or aligned)."""

    def __init__(self, data: Stack, stacks: dict[str, Stack | None], reasons: dict[str, str], nulls: Sequence[str],
                 groups: dict[str, list[str]], *, split_half: bool, modes: bool, block: int, seed: int,
                 mp_cache: dict[tuple[int, int], Spectrum]) -> None:
        self.data, self.stacks, self.reasons, self.nulls = data, stacks, reasons, list(nulls)
        self.mp_cache = mp_cache
        self.split_half, self.modes, self.block = split_half, modes, block
        self.halves = {key: split_halves(groups[key], seed) for key in ("data", *stacks) if key in groups}

    def grams(self, name: str) -> dict[str, torch.Tensor | None]:
        out: dict[str, torch.Tensor | None] = {"data": grams(self.data, [name], block=self.block)[name]}
        for key, st in self.stacks.items():
            out[key] = grams(st, [name], block=self.block)[name] if st is not None else None
        return out

    def entry(self, name: str, shape: Sequence[int], gs: dict[str, torch.Tensor | None]) -> dict[str, Any]:
        g = gs["data"]
        assert g is not None
        data = _spec(name, shape, g)
        out = data.summary()
        out["nulls"], out["excess"] = {}, {}
        for null in self.nulls:
            if null == "mp":
                sp = _mp(data, self.mp_cache)
            elif gs.get(null) is None:
                out["nulls"][null] = {"skipped": self.reasons[null]}
                continue
            else:
                sp = _spec(name, shape, gs[null])  # type: ignore[arg-type]
            out["nulls"][null] = sp.summary()
            out["excess"][null] = _excess(data, sp)
        if self.split_half:
            out["split_half"] = self.shared(data, gs)
        return out

    def shared(self, data: Spectrum, gs: dict[str, torch.Tensor | None]) -> dict[str, Any]:
        a, b = self.halves["data"]
        k = min(max(data.rank_for(0.9), 1), MAX_K, len(a) - 1, len(b) - 1)
        res = half_cosines(gs["data"], a, b, k)  # type: ignore[arg-type]
        res["n_halves"] = [len(a), len(b)]
        res["random"] = res["k"] / max(data.n_params, 1)
        res["nulls"] = {}
        for key in self.stacks:
            if key not in self.nulls:
                continue
            g = gs.get(key)
            if g is None:
                res["nulls"][key] = {"skipped": self.reasons[key]}
                continue
            ha, hb = self.halves[key]
            res["nulls"][key] = half_cosines(g, ha, hb, res["k"] or k)
        return res

    def mode_entry(self, name: str) -> dict[str, Any]:
        sides = {side: mode_summary(g, name, len(self.data))
                 for side, g in mode_grams(self.data, name, block=self.block).items()}
        for side in sides.values():
            if "skipped" not in side:
                side["nulls"] = {}
        for key, st in self.stacks.items():
            if key not in self.nulls:
                continue
            null_sides = mode_grams(st, name, block=self.block) if st is not None else None
            for side, entry in sides.items():
                if "skipped" in entry:
                    continue
                entry["nulls"][key] = ({"skipped": self.reasons[key]} if null_sides is None
                                       else mode_summary(null_sides[side], name, len(st)))  # type: ignore[arg-type]
        return sides

    def run(self, desc: str, progress: bool) -> dict[str, Any]:
        from tqdm.auto import tqdm

        by_layer: dict[str, list[str]] = {}
        for name in self.data.names:
            by_layer.setdefault(layer_of(name), []).append(name)
        tensors: dict[str, Any] = {}
        layers: dict[str, Any] = {}
        with tqdm(total=len(self.data.names), desc=desc, unit="tensor", disable=not progress) as bar:
            for layer, names in by_layer.items():
                acc: dict[str, torch.Tensor | None] = {}
                for name in names:
                    bar.set_postfix_str(name, refresh=False)
                    gs = self.grams(name)
                    entry = self.entry(name, self.data.shapes[name], gs)
                    entry["layer"] = layer
                    if self.modes and len(self.data.shapes[name]) >= 2:
                        entry["modes"] = self.mode_entry(name)
                    tensors[name] = entry
                    for key, g in gs.items():
                        acc[key] = None if g is None else g if key not in acc else acc[key] + g  # type: ignore[operator]
                    bar.update(1)
                size = sum(self.data.numel(n) for n in names)
                layers[layer] = {"tensors": names, **self.entry(layer, (size,), acc)}
        return {"tensors": tensors, "layers": layers}


def _groups(src: Source, stack: Stack) -> list[str]:
    """Which rows belong together (one model's checkpoints) for the split-half test."""
    if src.info.get("kind") == "zoo" and all("@" in i for i in stack.ids):
        return [i.rsplit("@", 1)[0] for i in stack.ids]
    return list(stack.ids)


def _aligned_mode(aligned: Any) -> bool:
    if aligned in (True, "both", "yes"):
        return True
    if aligned in (False, None, "none", "no"):
        return False
    raise ConfigError(f"aligned must be False, True or 'both' (CLI: none, yes, both), got {aligned!r}")


def _open(sources: Any, **kw: Any) -> Source:
    if isinstance(sources, Source):
        return sources
    if isinstance(sources, Stack):
        return Source("stack", sources, init_reason="a bare stack has no initialisation (pass a Source or a path)",
                      info={"kind": "stack"})
    return open_source(sources, **kw)


def analyze(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Source | Stack, *,
            nulls: Sequence[str] = NULLS, aligned: bool | str = "both", split_half: bool = True, modes: bool = True,
            arch: Any = None, split: str | None = None, epochs: str | int = "latest", limit: int | None = None,
            block: int = BLOCK, seed: int = 0, progress: bool = True, accuracy: bool = False,
            loo_models: int = 50) -> dict[str, Any]:
    """The subspace report of a zoo, checkpoints, a :class:`Source` or a :class:`Stack` (schema: see
    :mod:`wsl.subspace.report`).

    ``nulls``: any of ``init``, ``mp``, ``shuffled``. ``aligned``: ``False``
    analyses the stack as stored; ``True`` or ``"both"`` also aligns it (and
    the init null) to its barycentre and adds ``report["aligned"]`` (skipped,
    with the reason, when no architecture is known). ``arch``, ``split``,
    ``epochs``, ``limit`` select what :func:`open_source` reads; ``seed``
    drives the shuffled null, the split into halves and the init null built
    from an architecture. ``accuracy``: also the test accuracy the models keep
    when replaced by their projections, and a leave-one-out over ``loo_models``
    held-out rows (:func:`wsl.subspace.functional.accuracy_report`; zoos only,
    else skipped with the reason) in ``report["accuracy"]``.
    """
    t0 = time.perf_counter()
    bad = [n for n in nulls if n not in NULLS]
    if bad:
        raise ConfigError(f"unknown null {bad[0]!r}; choose from {', '.join(NULLS)}")
    want_aligned = _aligned_mode(aligned)
    src = _open(sources, arch=arch, split=split, epochs=epochs, limit=limit, init_seed=seed)
    nulls = [n for n in NULLS if n in nulls]
    init_reason = src.init_reason or "no init stack"
    reasons = {"init": init_reason}
    mp_cache: dict[tuple[int, int], Spectrum] = {}
    report: dict[str, Any] = {
        "format": REPORT_FORMAT, "source": src.label, "info": dict(src.info), "n_models": len(src.stack),
        "settings": {"nulls": nulls, "aligned": "both" if want_aligned else "none", "split_half": split_half,
                     "modes": modes, "block": block, "seed": seed, "epochs": epochs, "split": split, "limit": limit,
                     "accuracy": accuracy, "loo_models": loo_models if accuracy else 0},
        "nulls": {}}
    for null in nulls:
        if null == "init":
            report["nulls"]["init"] = ({"skipped": init_reason} if src.init is None else
                                       {"description": src.info.get("init", "initialised networks"),
                                        "n_models": len(src.init)})
        else:
            report["nulls"][null] = {"description": _DESCRIBE[null]}

    def run(data: Stack, init: Stack | None, desc: str) -> dict[str, Any]:
        stacks: dict[str, Stack | None] = {}
        if "init" in nulls:
            stacks["init"] = init
        if "shuffled" in nulls:
            stacks["shuffled"] = ShuffledStack(data, seed)
        groups = {"data": _groups(src, data), "shuffled": _groups(src, data)}
        if init is not None:
            groups["init"] = _groups(src, init)
        return _Run(data, stacks, reasons, nulls, groups, split_half=split_half, modes=modes, block=block,
                    seed=seed, mp_cache=mp_cache).run(desc, progress)

    report.update(run(src.stack, src.init, "subspace"))
    if want_aligned:
        report["aligned"] = _aligned_report(src, nulls, run, seed, progress)
    if accuracy:
        from wsl.subspace.functional import accuracy_report

        report["accuracy"] = accuracy_report(src, loo_models=loo_models, seed=seed, progress=progress)
    report["seconds"] = time.perf_counter() - t0
    return report


def _aligned_report(src: Source, nulls: Sequence[str], run: Any, seed: int, progress: bool) -> dict[str, Any]:
    from wsl.subspace.aligned import align_stack

    space = src.space()
    if space is None:
        return {"skipped": "no architecture known (give arch= / --arch): alignment needs the weight space"}
    stack, info = align_stack(src.stack, space, seed=seed, progress=progress)
    out: dict[str, Any] = {"alignment": info}
    init = None
    if "init" in nulls and src.init is not None:
        init, out["init_alignment"] = align_stack(src.init, space, seed=seed, progress=progress)
    out.update(run(stack, init, "subspace (aligned)"))
    return out

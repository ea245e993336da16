"""Writing group definitions into the spec: rigid heads, grouped-query heads, pieces around fixed factors.

During tracing, :mod:`wsl.space.unit_layout` records in ``SpecBuilder.defs``
that a group *stands for* a composite of others (a rotary q/k group for
``(heads, H) x (None, d)``, a query-heads group for ``(kv, K) x (None, r)``).
Before the spec is built, :func:`apply_definitions` writes them into every
tensor axis and site, and :func:`spec_factors` turns a parent factor followed
by its child's inner piece into two pieces of the child
(``((kv, K), (None, r), (v, d, 1))`` -> ``((v, K, d), (None, r), (v, d, 1))``,
the spec's own form: see *Factor* in :mod:`wsl.space.spec`).
:func:`dense_input` gives a dense layer its input axis in that form.
:func:`prune_derived_sites` drops the heads sites made for score tensors that
no edge reached.
"""

from __future__ import annotations

import dataclasses
import math

from wsl.errors import TraceError, UnsupportedLayerError
from wsl.space.builder import SpecBuilder, Val
from wsl.space.unit_layout import (
    Dim, dim_size, fmt, has_units, layout_of, normalize, parent, pieces_of, resolve, unit_groups,
)


def dense_input(b: SpecBuilder, x: Val, want: int, where: str, kind: str) -> Val:
    """The input of a dense layer reading dim ``want`` of ``x``, its units in spec form (pieces allowed)."""
    lay = layout_of(b, x, where)
    if not has_units(lay[want]) or any(has_units(dim) for d, dim in enumerate(lay) if d != want):
        raise UnsupportedLayerError(where, kind, "its input carries units on more dims than the one it reads "
                                    "(heads that were not merged back)")
    fac = spec_factors(b, lay[want], where)
    for g in unit_groups(fac):
        strides = [int(f[2]) for f in fac if f[0] == g and len(f) == 3]
        if strides != sorted(strides, reverse=True):
            raise UnsupportedLayerError(where, kind, "a reshape splits the unit axis and reorders its parts (a "
                                        "channel shuffle?); layers reading units in that order are not supported")
    return Val(shape=x.shape, site=x.site, fdim=want, factors=fac)


def spec_factors(b: SpecBuilder, dim: Dim, where: str) -> Dim:
    """Factors of a tensor axis segment for the spec: a parent followed by its child's inner piece become
    two pieces of the child."""
    fs = list(normalize(b, resolve(b, dim, where)))
    for g, places in pieces_of((tuple(fs),)).items():
        cover = math.prod(int(f[1]) for _, _, f in places)
        if cover == b.size(g):
            continue
        p = parent(b, g)
        at = [i for i, f in enumerate(fs) if p is not None and f[0] == p and len(f) == 2]
        first = min(i for _, i, _ in places)
        if p is None or not at or at[-1] > first or cover * b.size(p) != b.size(g):
            raise UnsupportedLayerError(where, "unit axes", f"units {fmt(tuple(fs))} hold part of a group without "
                                        "the heads it belongs to")
        fs[at[-1]] = (g, b.size(p), cover)
    return normalize(b, tuple(fs))


def prune_derived_sites(b: SpecBuilder) -> None:
    """Drop the heads sites of score tensors (:func:`site_for`) that no edge or node feature reached."""
    derived = set(b.scratch.get("unit_layout.sites", {}).values())
    used = {s for c in b.connections for s in (c.src, c.dst)} | {p.site for p in b.node_params}
    used |= set(b.inputs.values())
    drop = sorted(s for s in derived if s not in used)
    if not drop:
        return
    keep = [s for s in range(len(b.sites)) if s not in set(drop)]
    new_id = {old: i for i, old in enumerate(keep)}
    b.sites = [b.sites[s] for s in keep]
    b.site_slots = {new_id[s]: v for s, v in b.site_slots.items() if s in new_id}
    b.connections = [dataclasses.replace(c, src=new_id[c.src], dst=new_id[c.dst]) for c in b.connections]
    b.node_params = [dataclasses.replace(p, site=new_id[p.site]) for p in b.node_params]
    b.inputs = {k: new_id[v] for k, v in b.inputs.items()}


def apply_definitions(b: SpecBuilder) -> None:
    """Write ``b.defs`` into every tensor axis and site (the tracer calls it before :meth:`SpecBuilder.finish`)."""
    def defined(seg: Dim) -> bool:
        return any(f[0] is not None and b.find(f[0]) in b.defs for f in seg)

    for t in b.tensors.values():
        if not any(defined(seg) for ax in t.axes for seg in ax):
            continue
        axes = []
        for d, ax in enumerate(t.axes):
            segs = tuple(spec_factors(b, seg, t.module) if defined(seg) else seg for seg in ax)
            if sum(dim_size(s) for s in segs) != t.shape[d]:
                raise TraceError(f"internal: axis {d} of '{t.name}' lost units while resolving heads")
            axes.append(segs)
        t.axes = tuple(axes)
    for s in b.sites:
        g = b.find(s["group"])
        if g in b.defs:
            units = unit_groups(resolve(b, ((g, b.size(g)),)))
            if len(units) != 1:
                raise TraceError(f"internal: site '{s['name']}' stands for {len(units)} unit groups")
            s["group"] = units[0]
    for i, grp in enumerate(b.groups):
        if b.find(i) == i and i not in b.defs and grp.parent is not None and b.find(grp.parent) in b.defs:
            raise TraceError(f"internal: group '{grp.name}' is nested in heads that were redefined")

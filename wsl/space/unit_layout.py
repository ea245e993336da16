"""Units spread over several dims of a tensor: the algebra behind attention heads.

A *layout* lists, for every dim of a tensor, the row-major factors of that dim
(``(None, n)``, whole groups ``(g, n)`` and pieces ``(g, n, stride)``, see
:mod:`wsl.space.spec`). A :class:`~wsl.space.builder.Val` whose units sit on
one dim as one whole group is the classic case; every other layout is carried
in ``Val.split``. The operations:

* **reshape** (view, reshape, flatten, unflatten, squeeze, unsqueeze): the
  factors of all dims, concatenated, are regrouped row-major into the new
  dims; a unit factor cut by a dim boundary becomes two pieces. Splitting a
  projection's output into heads, ``linear(x).view(B, T, H, d)``, turns
  ``(g, H*d)`` into ``(g, H, d)`` on dim 2 and ``(g, d, 1)`` on dim 3; merging
  them back gives ``(g, H*d)`` again.
* **nesting**: an operation that treats the head dim on its own (the batch
  dims of an attention product, a reduction over ``head_dim``) needs heads to
  permute as blocks: ``g`` is nested in a parent ``p`` of ``H`` units
  (:meth:`SpecBuilder.nest`), and the outer piece *is* ``p``: ``(g, H, d)``
  becomes ``(p, H)`` while ``(g, d, 1)`` stays, the inner piece (unit ``j`` of
  the head given by the ``p`` factor).
* **rigid**: an operation that tells positions inside a head apart -- rotary
  embeddings multiply by ``cos``/``sin`` tables that vary along ``head_dim``
  and slice it into halves -- fixes the inner piece: ``g`` then *stands for*
  ``(p, H) x (None, d)``, recorded in ``SpecBuilder.defs``. Heads still move,
  units inside a head do not.
* **unify**: two layouts that meet elementwise, or in a dot product, must be
  permuted alike, dim by dim: whole groups are tied, inner pieces of two
  nested groups are tied (which ties their parents), an inner piece that
  meets a fixed factor is made rigid, and a free group that meets a
  composite of other factors is *defined* as that composite. With grouped-
  query attention the query heads ``(h, H)`` meet the repeated key heads
  ``((kv, K), (None, r))``: ``h`` becomes ``kv x r``, so each key/value head
  moves with its ``r`` query heads.

Before :meth:`SpecBuilder.finish`, :func:`wsl.space.definitions.apply_definitions`
writes every definition into the tensors' axes and sites.
"""

from __future__ import annotations

import math
from typing import Any

from wsl.errors import TraceError, UnsupportedLayerError
from wsl.space.builder import SpecBuilder, Val

Fac = tuple[Any, ...]
Dim = tuple[Fac, ...]
Layout = tuple[Dim, ...]


class StaleUnits(UnsupportedLayerError):
    """A tensor still refers to a fused output as a whole after another use split it into segments."""


def dim_size(dim: Dim) -> int:
    return math.prod(int(f[1]) for f in dim)


def fmt(dim: Dim) -> str:
    return "(" + ", ".join("·" if f[0] is None and f[1] == 1 else str(f[1]) if f[0] is None else
                           f"g{f[0]}:{f[1]}" if len(f) == 2 else f"g{f[0]}:{f[1]}/{f[2]}" for f in dim) + ")"


# ------------------------------------------------------------------------------------------ resolving
def _cut(f: Fac, lo: int, hi: int) -> Fac:
    """The part of factor ``f`` holding its digits of place value ``[lo, hi)`` (``lo | hi | size``)."""
    n = hi // lo
    if f[0] is None:
        return (None, n)
    stride = int(f[2]) if len(f) == 3 else 1
    return (f[0], n, stride * lo)


def digits(dim: Dim, stride: int, n: int, where: str) -> list[Fac]:
    """The factors of ``dim``'s flat index with place values ``[stride, stride * n)``."""
    out: list[Fac] = []
    place = 1
    lo, hi = stride, stride * n
    for f in reversed(dim):
        size = int(f[1])
        a, c = max(place, lo), min(place * size, hi)
        if a < c:
            if a % place or c % place or (c // place) % (a // place) or size % (c // place):
                raise UnsupportedLayerError(where, "unit axes", f"units {fmt(dim)} cannot be cut at {stride}x{n}")
            out.append(_cut(f, a // place, c // place))
        place *= size
    return out[::-1]


def resolve(b: SpecBuilder, dim: Dim, where: str = "") -> Dim:
    """``dim`` with union-find roots and every group definition substituted (recursively)."""
    out: list[Fac] = []
    for f in dim:
        if f[0] is None:
            out.append((None, int(f[1])))
            continue
        r = b.find(f[0])
        if r in b.defs:
            d = resolve(b, b.defs[r], where)
            if len(f) == 2 and int(f[1]) == dim_size(d):
                out.extend(d)
            else:
                out.extend(digits(d, int(f[2]) if len(f) == 3 else 1, int(f[1]), where))
        else:
            out.append((r, *f[1:]))
    return tuple(out)


def parent(b: SpecBuilder, g: int) -> int | None:
    p = b.groups[b.find(g)].parent
    return None if p is None else b.find(p)


def _merge(b: SpecBuilder, x: Fac, y: Fac) -> Fac | None:
    if x[0] is None and y[0] is None:
        return (None, x[1] * y[1])
    if x[0] is None or y[0] is None:
        return None
    if len(x) == 3 and len(y) == 3 and x[0] == y[0] and x[2] == y[1] * y[2]:
        return (x[0], x[1] * y[1], y[2])
    if len(x) == 2 and len(y) == 3 and y[2] == 1 and parent(b, y[0]) == x[0] and x[1] * y[1] == b.size(y[0]):
        return (y[0], b.size(y[0]))
    return None


def normalize(b: SpecBuilder, dim: Dim) -> Dim:
    """Drop unit-size factors (a group of one unit beside larger factors too: it has one index), merge
    neighbours (fixed with fixed, consecutive pieces, parent + inner)."""
    fs = [f for f in dim if not (f[0] is None and f[1] == 1)]
    if any(int(f[1]) > 1 for f in fs):
        fs = [f for f in fs if int(f[1]) > 1]
    i = 0
    while i < len(fs) - 1:
        m = _merge(b, fs[i], fs[i + 1])
        if m is None:
            i += 1
            continue
        fs[i:i + 2] = [m]
        i = max(i - 1, 0)
    fs = [(f[0], f[1]) if len(f) == 3 and f[2] == 1 and f[1] == b.size(f[0]) else f for f in fs]
    return tuple(fs) or ((None, 1),)


def raw_layout(v: Val) -> Layout:
    """The layout of ``v`` as stored (no union-find or definitions applied)."""
    lay: list[Dim] = [((None, int(n)),) for n in v.shape]
    if v.split:
        for d, dim in v.split:
            lay[d] = tuple(dim)
    elif v.fdim is not None and v.site is not None:
        lay[v.fdim] = tuple(v.factors)
    return tuple(lay)


def layout_of(b: SpecBuilder, v: Val, where: str = "") -> Layout:
    """The resolved, normalized layout of ``v``; :class:`StaleUnits` if it names a group split into segments."""
    lay = raw_layout(v)
    for dim in lay:
        for f in dim:
            if f[0] is not None and b.find(f[0]) in b.segments:
                raise StaleUnits(where, "unit axes", "a fused projection's output is used whole after another use "
                                 "split it into parts (q/k/v or gate/up)")
    return tuple(normalize(b, resolve(b, dim, where)) for dim in lay)


def unit_groups(dim: Dim) -> list[int]:
    return list(dict.fromkeys(f[0] for f in dim if f[0] is not None))


def has_units(dim: Dim) -> bool:
    return any(f[0] is not None for f in dim)


# ------------------------------------------------------------------------------------------- values
def _site_units(b: SpecBuilder, site: int) -> set[int]:
    g = b.find(b.site_group(site))
    return set(unit_groups(resolve(b, ((g, b.size(g)),)))) if g in b.defs else {g}


def site_for(b: SpecBuilder, site: int | None, g: int, where: str) -> int:
    """``site`` if its units are group ``g``'s, else a site of ``g`` derived from it (heads of a score tensor)."""
    if site is not None and b.find(g) in _site_units(b, site):
        return site
    cache: dict[tuple[int | None, int], int] = b.scratch.setdefault("unit_layout.sites", {})
    key = (site, b.find(g))
    if key not in cache or b.find(b.site_group(cache[key])) != b.find(g):
        cache[key] = b.new_site(g, where, "heads", b.depth(site))
    return cache[key]


def to_val(b: SpecBuilder, site: int | None, layout: Layout, shape: tuple[int, ...], where: str) -> Val:
    """The :class:`Val` of a tensor with ``layout``: the classic form when one dim holds one whole group."""
    dims = [d for d, dim in enumerate(layout) if has_units(dim)]
    if not dims:
        return Val(shape=tuple(shape))
    if len(dims) == 1:
        units = [f for f in layout[dims[0]] if f[0] is not None]
        if len(units) == 1 and len(units[0]) == 2:
            return Val(shape=tuple(shape), site=site_for(b, site, units[0][0], where), fdim=dims[0],
                       factors=layout[dims[0]])
    return Val(shape=tuple(shape), site=site, split=tuple((d, layout[d]) for d in dims))


# --------------------------------------------------------------------------------------- reshaping
def reshape(b: SpecBuilder, where: str, layout: Layout, new_shape: tuple[int, ...]) -> Layout:
    """Regroup ``layout`` row-major into ``new_shape`` (see the module docstring)."""
    flat = [f for dim in layout for f in dim if not (f[0] is None and f[1] == 1)]
    out: list[Dim] = []
    for m in new_shape:
        need, dim = int(m), []
        while need > 1:
            if not flat:
                raise TraceError(f"internal: reshape at '{where}' ran out of factors")
            f = flat.pop(0)
            n = int(f[1])
            if need % n == 0:
                dim.append(f)
                need //= n
            elif n % need == 0:
                dim.append(_cut(f, n // need, n))
                flat.insert(0, _cut(f, 1, n // need))
                need = 1
            elif f[0] is None and flat and flat[0][0] is None:  # fixed factors may be regrouped freely
                g = flat.pop(0)
                flat.insert(0, (None, n * int(g[1])))
            else:
                raise UnsupportedLayerError(where, "function 'reshape'", f"reshape into {tuple(new_shape)} cuts the "
                                            f"unit axis {fmt(tuple(f for d in layout for f in d))} unevenly")
        out.append(normalize(b, tuple(dim)))
    return tuple(out)


# ---------------------------------------------------------------------------------- nesting, rigid
def pieces_of(layout: Layout) -> dict[int, list[tuple[int, int, Fac]]]:
    out: dict[int, list[tuple[int, int, Fac]]] = {}
    for d, dim in enumerate(layout):
        for i, f in enumerate(dim):
            if f[0] is not None and len(f) == 3:
                out.setdefault(f[0], []).append((d, i, f))
    return out


def _heads_of(b: SpecBuilder, g: int, n: int, where: str) -> int:
    """The parent of ``g`` in ``n`` blocks, created (a ``head`` group) if ``g`` has none."""
    p = parent(b, g)
    if p is None:
        p = b.new_group(n, "head", where.split(":", 1)[0] + ":heads")
        b.nest(g, p, where)
        return b.find(p)
    if b.size(p) != n:
        raise UnsupportedLayerError(where, "unit axes", f"units already come in {b.size(p)} blocks, not {n}")
    return p


def nest_pieces(b: SpecBuilder, where: str, layout: Layout) -> Layout:
    """Nest every group whose outer piece sits on its own, so that the piece is the parent group."""
    lay = [list(dim) for dim in layout]
    for g, places in pieces_of(layout).items():
        d, i, f = max(places, key=lambda t: int(t[2][2]))
        outer, inner = int(f[1]), int(f[2])
        if outer * inner != b.size(g) or len(places) < 2:
            continue  # only the inner piece is here: its parent is a factor of this layout already
        p = _heads_of(b, g, outer, where)
        lay[d][i] = (p, outer)
    return tuple(normalize(b, tuple(dim)) for dim in lay)


def make_rigid(b: SpecBuilder, g: int, where: str) -> None:
    """Fix the order of ``g``'s units inside each block of its parent (rotary embeddings)."""
    r = b.find(g)
    if r in b.defs:
        return
    p = parent(b, r)
    if p is None:
        raise UnsupportedLayerError(where, "unit axes", "an operation tells apart positions inside heads of units "
                                    "that are not split into heads")
    if any(b.find(h.parent) == r for h in b.groups if h.parent is not None):
        raise UnsupportedLayerError(where, "unit axes", "fixes units that other groups are nested in")
    b.defs[r] = ((p, b.size(p)), (None, b.size(r) // b.size(p)))


# ------------------------------------------------------------------------------------------- unify
def _definable(b: SpecBuilder, g: int) -> bool:
    r = b.find(g)
    return not b.groups[r].fixed and r not in b.defs and r not in b.segments


def _unify_factor(b: SpecBuilder, where: str, x: Fac, y: Fac) -> None:
    if x == y or (x[0] is None and y[0] is None):
        return
    if x[0] is None or y[0] is None:
        u = y if x[0] is None else x
        if len(u) == 3 and u[2] == 1 and parent(b, u[0]) is not None:
            make_rigid(b, u[0], where)
            return
        raise UnsupportedLayerError(where, "unit axes", "combines units with a tensor that varies along them "
                                    "without carrying them")
    if len(x) == 2 and len(y) == 2:
        b.tie(x[0], y[0], where)
        return
    if len(x) == 3 and len(y) == 3 and x[2] == 1 and y[2] == 1:
        if b.size(x[0]) != b.size(y[0]):
            _shared_heads(b, where, x, y)
            return
        b.tie(x[0], y[0], where)
        return
    if len(x) + len(y) == 5 and (x if len(x) == 3 else y)[2] == 1:  # a head's units meet one whole key head
        _shared_heads(b, where, x, y)
        return
    raise UnsupportedLayerError(where, "unit axes", f"cannot match units {fmt((x,))} with {fmt((y,))}")


def _shared_heads(b: SpecBuilder, where: str, x: Fac, y: Fac) -> None:
    """Inner pieces of query heads meet those of fewer key heads (grouped-query attention without rotary).

    Query units ``Q`` (``H`` heads of ``d``) meet key units ``Kg`` (``K`` heads of ``d``, each repeated for
    ``r = H/K`` query heads, kv-major as ``repeat_kv`` and ``enable_gqa`` lay them out): the units inside
    each query head move as those of its key head, so ``Q`` *stands for* ``(Kg, K, d) x (None, r) x (Kg, d,
    1)`` and the query heads for ``(kv, K) x (None, r)``. The heads meeting (before or after) checks the
    grouping; another grouping is refused there.
    """
    q, k = (x, y) if b.size(x[0]) > b.size(y[0]) else (y, x)
    hq, kv = parent(b, q[0]), parent(b, k[0])
    d = int(q[1])
    single = len(k) == 2 and kv is None and b.size(k[0]) == d  # multi-query: one key head, not split
    if hq is None or (kv is None and not single) or b.find(k[0]) in b.defs \
            or not (_definable(b, q[0]) or b.find(q[0]) in b.defs) or b.size(q[0]) != b.size(hq) * d \
            or (not single and (b.size(k[0]) != b.size(kv) * d or b.size(hq) % b.size(kv))):
        raise UnsupportedLayerError(where, "unit axes", "units inside heads of different head counts meet, not as "
                                    "grouped-query attention (query heads in groups of key heads)")
    n_kv = 1 if single else b.size(kv)
    r = b.size(hq) // n_kv
    want_heads = ((None, r),) if single else ((kv, n_kv), (None, r))
    if b.find(hq) in b.defs:
        if normalize(b, resolve(b, ((hq, b.size(hq)),), where)) != want_heads:
            raise UnsupportedLayerError(where, "unit axes", "query heads are not grouped by key heads kv-major")
    elif _definable(b, hq):
        b.defs[b.find(hq)] = want_heads
    else:
        raise UnsupportedLayerError(where, "unit axes", "query heads are fixed or already split")
    stands = ((None, r), (k[0], d)) if single else ((k[0], n_kv, d), (None, r), (k[0], d, 1))
    if b.find(q[0]) not in b.defs:
        b.defs[b.find(q[0])] = stands
    elif normalize(b, resolve(b, ((q[0], b.size(q[0])),), where)) != normalize(b, resolve(b, stands, where)):
        raise UnsupportedLayerError(where, "unit axes", "query units already stand for other units")


def unify(b: SpecBuilder, where: str, da: Dim, db: Dim) -> None:
    """Require two same-size dims to be permuted alike (see the module docstring)."""
    da, db = normalize(b, resolve(b, da, where)), normalize(b, resolve(b, db, where))
    if da == db:
        return
    if len(da) == len(db) and all(x[1] == y[1] for x, y in zip(da, db)):
        for x, y in zip(da, db):
            _unify_factor(b, where, x, y)
        return
    for x, y in ((da, db), (db, da)):
        if len(x) == 1 and len(x[0]) == 2 and x[0][0] is not None and _definable(b, x[0][0]) \
                and x[0][0] not in unit_groups(y) and has_units(y):
            b.defs[b.find(x[0][0])] = tuple(y)
            return
    raise UnsupportedLayerError(where, "unit axes", f"cannot match units {fmt(da)} with {fmt(db)}")

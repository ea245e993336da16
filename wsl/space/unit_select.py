"""Selecting along a dim that carries units: parts of a fused output, or positions inside heads.

``x[..., a:b]``, ``x.select(d, i)``, ``split``, ``chunk``, ``unbind`` and
``narrow`` along a dim whose factor is

* a whole group, or the outermost piece of one (the ``3`` of a
  ``(3, heads, head_dim)`` view): the selected ranges become parts of a split
  group (:mod:`wsl.space.segments`) and each result carries its part;
* the inner piece of a group split into heads (``head_dim``, sliced into
  halves by rotary embeddings): the units inside each head are made rigid
  (:func:`wsl.space.unit_layout.make_rigid`), the dim then carries no units
  and any selection along it is allowed;

anything else (a middle piece, a dim mixing units with other factors, a step)
is refused. Selections along dims without units only resize or drop them.
"""

from __future__ import annotations

from typing import Any

from wsl.errors import UnsupportedLayerError
from wsl.space.builder import SpecBuilder, Val
from wsl.space.segments import leaves, part_site, split_group
from wsl.space.unit_layout import Layout, layout_of, nest_pieces, normalize, raw_layout, resolve, to_val, make_rigid


def _refuse(where: str, name: str, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(where, f"function '{name}'", why)


def _group_total(b: SpecBuilder, g: int) -> int:
    r = b.find(g)
    return sum(n for _, n, _ in b.segments[r]) if r in b.segments else b.size(r)


def _plain(layout: Layout, d: int, lo: int, hi: int, drop: bool) -> Layout:
    if drop:
        return layout[:d] + layout[d + 1:]
    return layout[:d] + (((None, hi - lo),),) + layout[d + 1:]


def select(b: SpecBuilder, where: str, name: str, x: Val, d: int, ranges: list[tuple[int, int]], drop: bool,
           shapes: list[tuple[int, ...]], step: int = 1) -> list[Val]:
    """One :class:`Val` per range ``[lo, hi)`` of dim ``d`` of ``x`` (the dim dropped if ``drop``)."""
    raw = raw_layout(x)
    units = [f for f in raw[d] if f[0] is not None]
    if not units:
        lay = layout_of(b, x, where)
        return [to_val(b, x.site, _plain(lay, d, lo, hi, drop), s, where) for (lo, hi), s in zip(ranges, shapes)]
    fs = [f for f in raw[d] if not (f[0] is None and f[1] == 1)]
    if len(fs) != 1:
        raise _refuse(where, name, "selects along a dim that mixes units with other indices")
    f = fs[0]
    g, n = b.find(f[0]), int(f[1])
    stride = int(f[2]) if len(f) == 3 else 1
    if g not in b.segments and stride == 1 and n < b.size(g):  # inside heads: fix the order there
        lay = nest_pieces(b, where, layout_of(b, x, where))
        make_rigid(b, g, where)
        lay = tuple(normalize(b, resolve(b, dim, where)) for dim in lay)
        return [to_val(b, x.site, _plain(lay, d, lo, hi, drop), s, where) for (lo, hi), s in zip(ranges, shapes)]
    if n * stride != _group_total(b, g):
        raise _refuse(where, name, "selects along heads of units split into heads and more")
    if step != 1:
        raise _refuse(where, name, "selects every k-th unit")
    split_group(b, where, g, [c * stride for lo, hi in ranges for c in (lo, hi)])
    out = []
    for (lo, hi), shape in zip(ranges, shapes):
        hit = [leaf for leaf in leaves(b, g) if leaf[0] == lo * stride and leaf[1] == (hi - lo) * stride]
        if not hit:
            raise _refuse(where, name, "selects across parts that an earlier split separated")
        part = hit[0][2]
        lay = _relabel(b, where, name, raw[:d] + (((None, 1),),) + raw[d + 1:], g, part, stride)
        lay = _plain(lay, d, lo, hi, True) if drop else lay[:d] + (((part, hi - lo, stride),),) + lay[d + 1:]
        lay = tuple(normalize(b, resolve(b, dim, where)) for dim in lay)
        site = part_site(b, x.site, g, part) if x.site is not None else None
        out.append(to_val(b, site, lay, shape, where))
    return out


def _relabel(b: SpecBuilder, where: str, name: str, raw: Layout, g: int, part: int, stride: int) -> Layout:
    """``raw`` with the pieces of split group ``g`` finer than ``stride`` given to ``part``."""
    lay = []
    for dim in raw:
        new: list[Any] = []
        for f in dim:
            if f[0] is None or b.find(f[0]) != g:
                new.append(f)
            elif len(f) == 3 and int(f[1]) * int(f[2]) <= stride:
                new.append((part, f[1], f[2]))
            else:
                raise _refuse(where, name, "selects a part of units that also appear whole elsewhere")
        lay.append(tuple(new))
    return tuple(lay)


def ranges_of(name: str, args: tuple, kwargs: dict, x: Val, out: Any) -> tuple[int, list[tuple[int, int]], bool, int]:
    """(dim, ranges, drop, step) of a selection op, from its arguments and output shapes."""
    nd = len(x.shape)

    def arg(i: int, key: str, default: Any) -> Any:
        return kwargs.get(key, args[i] if len(args) > i else default)

    if name == "select":
        d = int(arg(1, "dim", 0)) % nd
        i = int(arg(2, "index", 0)) % x.shape[d]
        return d, [(i, i + 1)], True, 1
    if name == "narrow":
        d = int(arg(1, "dim", 0)) % nd
        s = int(arg(2, "start", 0)) % x.shape[d]
        return d, [(s, s + int(arg(3, "length", 0)))], False, 1
    if name == "slice":
        d = int(arg(1, "dim", 0)) % nd
        start, end, step = arg(2, "start", None), arg(3, "end", None), arg(4, "step", 1)
        lo, hi, st = slice(start, end, step).indices(x.shape[d])
        return d, [(lo, hi)], False, int(st)
    if name == "unbind":
        d = int(arg(1, "dim", 0)) % nd
        return d, [(i, i + 1) for i in range(x.shape[d])], True, 1
    d = int(arg(2, "dim", 0)) % nd  # split, chunk, split_with_sizes, tensor_split
    sizes = [int(o.shape[d]) for o in out]
    bounds = [0]
    for s in sizes:
        bounds.append(bounds[-1] + s)
    return d, list(zip(bounds, bounds[1:])), False, 1

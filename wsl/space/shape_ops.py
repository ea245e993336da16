"""Unit-axis bookkeeping through shape operations: reshapes, transposes, indexing, splits, pads, reductions.

These rules only move the unit axis of a :class:`~wsl.space.builder.Val` (or
refuse when an operation would split, select or pad units); none of them adds
tensors, groups or sites to the spec. The rules that do live in
:mod:`wsl.space.ops`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from wsl.errors import UnsupportedLayerError
from wsl.space.builder import Val


def _shape(out: Any) -> tuple[int, ...]:
    return tuple(out.shape)


def group_factor(factors: tuple) -> tuple[int, int, int, int]:
    """(outer_fixed, group, size, inner_fixed) of normalized factors."""
    outer = inner = 1
    g = n = None
    for f in factors:
        if f[0] is None:
            if g is None:
                outer *= f[1]
            else:
                inner *= f[1]
        else:
            g, n = f
    assert g is not None and n is not None
    return outer, g, n, inner


def reduce(path: str, name: str, x: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    if not isinstance(x, Val):
        return None
    shape = _shape(out)
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    keep = kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False)
    if dim is None:
        return Val(shape=shape)
    dims = sorted(int(dd) % x.ndim for dd in (dim if isinstance(dim, (list, tuple)) else [dim]))
    if x.fdim is None:
        return x.with_(shape=shape)
    if x.fdim in dims:
        return Val(shape=shape)  # invariant summary over the units
    fdim = x.fdim if keep else x.fdim - sum(1 for dd in dims if dd < x.fdim)
    return x.with_(shape=shape, fdim=fdim)


def reshape_fdim(old: tuple[int, ...], new: tuple[int, ...], fdim: int, factors: tuple) -> tuple[int, tuple] | None:
    """Where the unit axis lands after a row-major reshape ``old -> new``, or None if split."""
    outer, g, n, inner_f = group_factor(factors)
    inner = math.prod(old[fdim + 1:])
    g_lo = inner * inner_f
    g_hi = g_lo * n
    bounds = {math.prod(old[i:]) for i in range(len(old) + 1)} | {g_lo, g_hi}
    best = None
    for j in range(len(new)):
        lo = math.prod(new[j + 1:])
        hi = lo * new[j]
        if lo <= g_lo and hi >= g_hi and lo in bounds and hi in bounds and (new[j] > 1 or n == 1):
            if best is None or hi - lo < best[1]:
                best = (j, hi - lo, lo, hi)
    if best is None:
        return None
    j, _, lo, hi = best
    facs = tuple(f for f in ((None, hi // g_hi), (g, n), (None, g_lo // lo)) if f[0] is not None or f[1] > 1)
    return j, facs


def reshape(path: str, name: str, x: Any, out: Any) -> Any:
    if not isinstance(x, Val):
        return None
    shape = _shape(out)
    if x.site is None or x.fdim is None:
        return x.with_(shape=shape)
    r = reshape_fdim(x.shape, shape, x.fdim, x.factors)
    if r is None:
        raise UnsupportedLayerError(path, f"function '{name}'",
                                    f"reshape {x.shape} -> {shape} splits the unit axis (dim {x.fdim})")
    return x.with_(shape=shape, fdim=r[0], factors=r[1])


def transpose(path: str, name: str, x: Any, rest: tuple, kwargs: dict, out: Any) -> Any:
    if not isinstance(x, Val):
        return None
    shape = _shape(out)
    if x.fdim is None:  # a transposed parameter is not read as stored: no rule may claim it as such
        return Val(shape=shape, ids=x.ids) if x.param else x.with_(shape=shape)
    return x.with_(shape=shape, fdim=dim_order(name, x.ndim, rest, kwargs).index(x.fdim))


def dim_order(name: str, n: int, rest: tuple, kwargs: dict) -> list[int]:
    """``order[i]``: the input dim that output dim ``i`` comes from, for transpose/permute/movedim/t."""
    order = list(range(n))
    if name == "t":
        order = order[::-1]
    elif name == "transpose":
        a0, a1 = (int(rest[0]) % n, int(rest[1]) % n) if len(rest) >= 2 else (int(kwargs["dim0"]) % n, int(kwargs["dim1"]) % n)
        order[a0], order[a1] = order[a1], order[a0]
    elif name == "permute":
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest or kwargs.get("dims")
        order = [int(d) % n for d in dims]
    else:  # movedim
        src, dst = (rest[0], rest[1]) if len(rest) >= 2 else (kwargs["source"], kwargs["destination"])
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        src = [s % n for s in src]
        dst = [d % n for d in dst]
        rest_dims = [i for i in range(n) if i not in src]
        order = [-1] * n
        for s, d in zip(src, dst):
            order[d] = s
        it = iter(rest_dims)
        order = [o if o >= 0 else next(it) for o in order]
    return order


def getitem(path: str, x: Any, idx: Any, out: Any) -> Any:
    if isinstance(x, (tuple, list)):
        return x[idx]
    if not isinstance(x, Val):
        return None
    shape = _shape(out)
    if x.fdim is None:
        return x.with_(shape=shape)
    items = idx if isinstance(idx, tuple) else (idx,)
    n_spec = sum(1 for i in items if i is not None and i is not Ellipsis)
    d = o = 0
    new_fdim = None
    for it in items:
        if it is Ellipsis:
            for _ in range(x.ndim - n_spec):
                if d == x.fdim:
                    new_fdim = o
                d += 1
                o += 1
        elif it is None:
            o += 1
        elif isinstance(it, slice):
            if d == x.fdim:
                if it != slice(None) and it.indices(x.shape[d]) != (0, x.shape[d], 1):
                    raise UnsupportedLayerError(path, "indexing", "selects a subset of the units")
                new_fdim = o
            d += 1
            o += 1
        else:
            if d == x.fdim:
                raise UnsupportedLayerError(path, "indexing", "selects individual units")
            if isinstance(it, torch.Tensor) and it.dim() != 0:
                raise UnsupportedLayerError(path, "indexing", "advanced (tensor) indexing of a unit tensor")
            d += 1
    if new_fdim is None:
        new_fdim = o + (x.fdim - d)
    return x.with_(shape=shape, fdim=new_fdim)


def split(path: str, name: str, x: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    if not isinstance(x, Val):
        return None
    dim = int(kwargs.get("dim", args[2] if len(args) > 2 else 0)) if name != "unbind" else int(
        kwargs.get("dim", args[1] if len(args) > 1 else 0))
    dim %= x.ndim
    if x.fdim is not None and dim == x.fdim:
        raise UnsupportedLayerError(path, f"function '{name}'", "splits the unit axis")
    res = []
    for o in out:
        fd = x.fdim
        if name == "unbind" and fd is not None and dim < fd:
            fd -= 1
        res.append(x.with_(shape=tuple(o.shape), fdim=fd))
    return tuple(res)


def roll(path: str, name: str, x: Val, args: tuple, kwargs: dict, out: Any) -> Val:
    """``roll``/``flip`` along dims that carry no units (shifted windows) move tokens, not units."""
    dims = kwargs.get("dims", args[2] if name == "roll" and len(args) > 2 else args[1] if len(args) > 1 else None)
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if x.split or (x.fdim is not None and (not dims or x.fdim in [int(d) % x.ndim for d in dims])):
        raise UnsupportedLayerError(path, f"function '{name}'", "reorders the units")
    if x.param:
        return Val(shape=_shape(out))  # a reordered parameter is not read as stored
    return x.with_(shape=_shape(out))


def pad(path: str, x: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    if not isinstance(x, Val):
        return None
    pad = kwargs.get("pad", args[1] if len(args) > 1 else ())
    k = len(pad) // 2
    if x.fdim is not None and x.site is not None and x.fdim >= x.ndim - k:
        i = x.ndim - 1 - x.fdim
        if pad[2 * i] or pad[2 * i + 1]:
            raise UnsupportedLayerError(path, "function 'pad'", "pads the unit axis")
    return x.with_(shape=_shape(out))

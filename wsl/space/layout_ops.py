"""Rules for operations on tensors whose units span several dims (attention heads), or that cut the unit axis.

:func:`wants` tells :func:`wsl.space.ops.handle` when an operation needs these
rules instead of the single-dim ones: an operand carries a split layout
(:mod:`wsl.space.unit_layout`), a reshape splits a unit axis, a selection
cuts one (:mod:`wsl.space.unit_select`), or the operation is an attention
product (:mod:`wsl.space.attention_ops`). The rules, per operation:

* reshapes, transposes, ``expand``, ``repeat_interleave``: move factors
  (row-major regrouping, dim reordering, broadcast and repeated dims are fixed
  factors);
* elementwise operations (unary: the layout is kept; binary and n-ary, with
  broadcasting): the unit operands are unified dim by dim; a constant,
  parameter or input that varies along an inner head piece makes it rigid
  (rotary ``cos``/``sin`` tables), along anything else it is refused; a
  parameter that does not vary along units is left untouched;
* reductions: over an inner piece (``head_dim``) the parent (heads) stays;
  over whole groups the result carries no units; over heads while keeping
  positions inside them: refused;
* ``cat``/``stack`` along a dim without units: operands unified on the others.
"""

from __future__ import annotations

from typing import Any

import torch

from wsl.errors import UnsupportedLayerError
from wsl.space import attention_ops, unit_select
from wsl.space.broadcast import constant_along
from wsl.space.builder import SpecBuilder, Val
from wsl.space.shape_ops import dim_order, reshape_fdim
from wsl.space.unit_layout import (
    Layout, has_units, layout_of, nest_pieces, normalize, parent, raw_layout, reshape, resolve, to_val,
    unify,
)

RESHAPES = {"flatten", "view", "reshape", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
TRANSPOSES = {"transpose", "permute", "movedim", "t"}
SELECTS = {"select", "slice", "narrow", "split", "chunk", "unbind", "split_with_sizes", "tensor_split"}
ATTENTION = {"matmul", "bmm", "scaled_dot_product_attention"}
UNARY_KEEP = {"contiguous", "clone", "detach", "to", "type", "type_as", "float", "double", "half", "bfloat16",
              "alias", "dropout", "softmax", "log_softmax", "neg", "pos", "relu", "gelu", "silu", "tanh", "sigmoid",
              "exp", "log", "abs", "sqrt", "rsqrt", "square", "erf", "sin", "cos", "reciprocal", "sign",
              "requires_grad", "cpu", "cuda", "leaky_relu", "elu", "mish", "softplus", "hardswish", "hardsigmoid",
              "hardtanh", "relu6", "selu", "celu", "logsigmoid", "softsign", "tanhshrink", "sigmoid", "logical_not"}
ELEMENTWISE = {"add", "sub", "mul", "truediv", "div", "rsub", "radd", "rmul", "rtruediv", "pow", "maximum", "minimum",
               "floordiv", "gt", "lt", "ge", "le", "eq", "ne", "masked_fill", "clamp", "clip", "clamp_min",
               "clamp_max", "where", "lerp", "addcmul", "addcdiv", "min", "max"}
REDUCE = {"mean", "sum", "amax", "amin", "logsumexp", "std", "var", "nansum", "nanmean", "norm"}


def _vals(vargs: tuple, vkwargs: dict) -> list[Val]:
    out: list[Val] = []
    for v in list(vargs) + list(vkwargs.values()):
        if isinstance(v, Val):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            out.extend(x for x in v if isinstance(x, Val))
    return out


def _stale(b: SpecBuilder, v: Val) -> bool:
    return v.site is not None and any(f[0] is not None and b.find(f[0]) in b.segments
                                      for dim in raw_layout(v) for f in dim)


def wants(b: SpecBuilder, name: str, args: tuple, kwargs: dict, vargs: tuple, vkwargs: dict, out: Any) -> bool:
    """Whether this operation needs the rules of this module (see the module docstring)."""
    vals = _vals(vargs, vkwargs)
    if any(v.split or _stale(b, v) for v in vals):
        return True
    if name in ATTENTION:
        return any(v.site is not None for v in vals)
    x = vargs[0] if vargs else None
    if not isinstance(x, Val) or x.site is None or x.fdim is None:
        return False
    if name in RESHAPES and isinstance(out, torch.Tensor):
        return reshape_fdim(x.shape, tuple(out.shape), x.fdim, x.factors) is None
    if name in SELECTS:
        d, _, _, _ = unit_select.ranges_of(name, args, kwargs, x, out)
        return d == x.fdim
    if name == "getitem" and len(args) > 1:
        return _touches_units(x, args[1])
    return False


def _touches_units(x: Val, idx: Any) -> bool:
    items = idx if isinstance(idx, tuple) else (idx,)
    if any(it is Ellipsis for it in items) or any(isinstance(it, torch.Tensor) for it in items):
        n_spec = sum(1 for i in items if i is not None and i is not Ellipsis)
        expanded: list[Any] = []
        for it in items:
            expanded.extend([slice(None)] * (x.ndim - n_spec) if it is Ellipsis else [it])
        items = tuple(expanded)
    d = 0
    for it in items:
        if it is None:
            continue
        if d == x.fdim:
            return not (isinstance(it, slice) and it.indices(x.shape[d]) == (0, x.shape[d], 1))
        d += 1
    return False


def handle(b: SpecBuilder, path: str, name: str, args: tuple, kwargs: dict, vargs: tuple, vkwargs: dict,
           out: Any) -> Any:
    x = vargs[0] if vargs else None
    if name in ATTENTION:
        return attention_ops.handle(b, path, name, args, kwargs, vargs, vkwargs, out)
    if name in SELECTS:
        assert isinstance(x, Val)
        d, ranges, drop, step = unit_select.ranges_of(name, args, kwargs, x, out)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        res = unit_select.select(b, path, name, x, d, ranges, drop, [tuple(o.shape) for o in outs], step)
        return tuple(res) if isinstance(out, (list, tuple)) else res[0]
    if name == "getitem":
        return _getitem(b, path, x, args[1], out)
    if not isinstance(x, Val) or x.site is None:
        if name in ELEMENTWISE or name in ("cat", "stack"):
            return _elementwise(b, path, name, args, vargs, vkwargs, out) if name in ELEMENTWISE else \
                _join(b, path, name, args, kwargs, vargs, out)
        raise UnsupportedLayerError(path, f"function '{name}'", "its first operand carries no units but another "
                                    "has units split into heads")
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else ()
    if name in RESHAPES:
        return to_val(b, x.site, reshape(b, path, layout_of(b, x, path), shape), shape, path)
    if name in TRANSPOSES:
        order = dim_order(name, x.ndim, args[1:], kwargs)
        lay = layout_of(b, x, path)
        return to_val(b, x.site, tuple(lay[i] for i in order), shape, path)
    if name in UNARY_KEEP or (name in ELEMENTWISE and len(_vals(vargs, vkwargs)) == 1 and _scalars_only(args[1:])):
        if shape != x.shape:
            raise UnsupportedLayerError(path, f"function '{name}'", "changes the shape of a tensor split into heads")
        return x.with_(shape=shape)
    if name == "expand":
        return _expand(b, path, x, shape)
    if name == "repeat_interleave":
        return _repeat(b, path, x, args, kwargs, shape)
    if name in ELEMENTWISE:
        return _elementwise(b, path, name, args, vargs, vkwargs, out)
    if name in REDUCE:
        return _reduce(b, path, name, x, args, kwargs, shape)
    if name in ("cat", "stack"):
        return _join(b, path, name, args, kwargs, vargs, out)
    raise UnsupportedLayerError(path, f"function '{name}'", "wsl has no rule for this operation on units split "
                                "into heads (or on a fused output split into parts)")


def _scalars_only(xs: Any) -> bool:
    return all(not isinstance(v, torch.Tensor) or v.dim() == 0 for v in xs)


# ------------------------------------------------------------------------------------------- shapes
def _expand(b: SpecBuilder, path: str, x: Val, shape: tuple[int, ...]) -> Val:
    lay = layout_of(b, x, path)
    lay = (((None, 1),),) * (len(shape) - len(lay)) + lay
    new = []
    for dim, n in zip(lay, shape):
        if _size(dim) == n:
            new.append(dim)
        elif _size(dim) == 1:
            new.append(((None, n),))
        else:
            raise UnsupportedLayerError(path, "function 'expand'", f"cannot expand {x.shape} to {shape}")
    return to_val(b, x.site, tuple(new), shape, path)


def _size(dim: Any) -> int:
    n = 1
    for f in dim:
        n *= int(f[1])
    return n


def _repeat(b: SpecBuilder, path: str, x: Val, args: tuple, kwargs: dict, shape: tuple[int, ...]) -> Val:
    """``repeat_interleave(r, dim)``: index ``i*r + j`` of the result is index ``i``: a fixed factor ``r`` inside."""
    reps = kwargs.get("repeats", args[1] if len(args) > 1 else None)
    d = kwargs.get("dim", args[2] if len(args) > 2 else None)
    if not isinstance(reps, int) or d is None:
        raise UnsupportedLayerError(path, "function 'repeat_interleave'", "needs an integer repeat and a dim")
    d = int(d) % len(shape)
    lay = list(layout_of(b, x, path))
    lay[d] = normalize(b, tuple(lay[d]) + ((None, reps),))
    return to_val(b, x.site, tuple(lay), shape, path)


def _getitem(b: SpecBuilder, path: str, x: Any, idx: Any, out: Any) -> Any:
    if isinstance(x, (tuple, list)):
        return x[idx]
    assert isinstance(x, Val)
    items = idx if isinstance(idx, tuple) else (idx,)
    n_spec = sum(1 for i in items if i is not None and i is not Ellipsis)
    expanded: list[Any] = []
    for it in items:
        expanded.extend([slice(None)] * (x.ndim - n_spec) if it is Ellipsis else [it])
    cur, d = x, 0
    for it in expanded:
        if it is None:
            lay = layout_of(b, cur, path)
            shape = cur.shape[:d] + (1,) + cur.shape[d:]
            cur = to_val(b, cur.site, lay[:d] + (((None, 1),),) + lay[d:], shape, path)
            d += 1
            continue
        if isinstance(it, torch.Tensor) and it.dim() > 0:
            raise UnsupportedLayerError(path, "indexing", "advanced (tensor) indexing of a tensor with units")
        n = cur.shape[d]
        if isinstance(it, slice):
            lo, hi, st = it.indices(n)
            if (lo, hi, st) != (0, n, 1):
                shape = cur.shape[:d] + (len(range(lo, hi, st)),) + cur.shape[d + 1:]
                cur = unit_select.select(b, path, "getitem", cur, d, [(lo, hi)], False, [shape], st)[0]
            d += 1
        else:
            i = int(it) % n
            shape = cur.shape[:d] + cur.shape[d + 1:]
            cur = unit_select.select(b, path, "getitem", cur, d, [(i, i + 1)], True, [shape])[0]
    if tuple(cur.shape) != tuple(out.shape):
        raise UnsupportedLayerError(path, "indexing", f"internal: indexing gives {cur.shape}, expected "
                                    f"{tuple(out.shape)}")
    return cur


# -------------------------------------------------------------------------------------- elementwise
def _aligned(lay: Layout, nd: int) -> list[Any]:
    return [((None, 1),)] * (nd - len(lay)) + list(lay)


def _elementwise(b: SpecBuilder, path: str, name: str, args: tuple, vargs: tuple, vkwargs: dict, out: Any) -> Val:
    shape = tuple(out.shape)
    nd = len(shape)
    vals = _vals(vargs, vkwargs)
    units = [v for v in vals if v.site is not None]
    others = [v for v in vals if v.site is None]
    lays = [_aligned(nest_pieces(b, path, layout_of(b, v, path)), nd) for v in units]
    for d in range(nd):  # unit operands meet dim by dim
        carried = [lay[d] for lay in lays if has_units(lay[d])]
        for dim in carried[1:]:
            unify(b, path, carried[0], dim)
    for v in others:  # constants, inputs and parameters that vary along units
        vs = (1,) * (nd - v.ndim) + tuple(v.shape)
        for lay in lays:
            for d in range(nd):
                if vs[d] > 1 and has_units(lay[d]) and not constant_along(v, d - (nd - v.ndim)):
                    if v.raw:
                        raise UnsupportedLayerError(path, f"function '{name}'", "combines units with a network "
                                                    "input that varies along them")
                    unify(b, path, lay[d], ((None, vs[d]),))
        if v.param:
            b.extras.append(v.param)  # it varies only along fixed positions (inside rigid heads) or not at all
    final = [_aligned(layout_of(b, v, path), nd) for v in units]
    res: list[Any] = []
    for d in range(nd):
        with_units = [lay[d] for lay in final if has_units(lay[d])]
        res.append(with_units[0] if with_units else ((None, shape[d]),))
    sites = list(dict.fromkeys(v.site for v in units))
    if len(sites) == 1:
        return to_val(b, sites[0], tuple(res), shape, path)
    val = to_val(b, None, tuple(res), shape, path)
    if val.split:  # e.g. q * rsqrt(mean(q^2)) per head: the operand that carries all the units keeps its site
        full = list(dict.fromkeys(v.site for v, lay in zip(units, final) if list(lay) == res))
        if len(full) == 1:
            return val.with_(site=full[0])
    if val.split or val.site is None:
        raise UnsupportedLayerError(path, f"function '{name}'", "combines tensors of different layers whose units "
                                    "are split into heads")
    kind = "residual" if name in ("add", "sub", "radd", "rsub") else "product"
    g = b.site_group(val.site)
    site = b.new_site(g, path, "add" if kind == "residual" else "product", max(b.depth(s) for s in sites))
    for s in sites:
        b.connect(kind, s, site, path)
    return val.with_(site=site)


def _reduce(b: SpecBuilder, path: str, name: str, x: Val, args: tuple, kwargs: dict, shape: tuple[int, ...]) -> Val:
    dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
    keep = bool(kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False))
    lay = nest_pieces(b, path, layout_of(b, x, path))
    dims = list(range(len(lay))) if dim is None else sorted(int(d) % len(lay) for d in (
        dim if isinstance(dim, (list, tuple)) else [dim]))
    kept = [lay[d] for d in range(len(lay)) if d not in dims]
    kept_groups = {f[0] for dm in kept for f in dm if f[0] is not None}
    for d in dims:
        for f in lay[d]:
            if f[0] is None:
                continue
            if len(f) == 3 and parent(b, f[0]) in kept_groups:
                continue  # over positions inside heads: the heads stay
            if f[0] in kept_groups or any(parent(b, g) == f[0] for g in kept_groups):
                raise UnsupportedLayerError(path, f"function '{name}'", "reduces over heads while keeping the "
                                            "positions inside them")
    new = tuple(((None, 1),) if d in dims else lay[d] for d in range(len(lay))) if keep else tuple(kept)
    return to_val(b, x.site, new, shape, path)


def _join(b: SpecBuilder, path: str, name: str, args: tuple, kwargs: dict, vargs: tuple, out: Any) -> Val:
    shape = tuple(out.shape)
    nd = len(shape)
    d = int(kwargs.get("dim", args[1] if len(args) > 1 else 0)) % nd
    items = [v for v, t in zip(vargs[0], args[0]) if name == "stack" or t.numel() > 0]
    units = [v for v in items if isinstance(v, Val) and v.site is not None]  # (empty parts: an empty cache)
    if any(isinstance(v, Val) and (v.raw or v.param) for v in items):
        raise UnsupportedLayerError(path, f"function '{name}'", "joins parameters or inputs with units split "
                                    "into heads")
    lays = []
    for v in units:
        lay = list(layout_of(b, v, path))
        if name == "stack":
            lay.insert(d, ((None, 1),))
        if has_units(lay[d]):
            raise UnsupportedLayerError(path, f"function '{name}'", "joins along a dim that carries units")
        lays.append(lay)
    for dd in range(nd):
        if dd != d:
            carried = [lay[dd] for lay in lays if has_units(lay[dd])]
            for dim in carried[1:]:
                unify(b, path, carried[0], dim)
    if len(units) != len(items) and any(has_units(lay[dd]) for lay in lays for dd in range(nd) if dd != d):
        raise UnsupportedLayerError(path, f"function '{name}'", "joins units with tensors that carry none")
    final = list(layout_of(b, units[0], path))
    if name == "stack":
        final.insert(d, ((None, 1),))
    final[d] = ((None, shape[d]),)
    if len({v.site for v in units}) > 1:
        raise UnsupportedLayerError(path, f"function '{name}'", "joins tensors of different layers whose units "
                                    "are split into heads")
    return to_val(b, units[0].site, tuple(normalize(b, resolve(b, dm, path)) for dm in final), shape, path)


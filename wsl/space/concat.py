"""Concatenation along the unit axis (DenseNet, Inception, U-Net skips) and the ops that follow it.

``y = cat([x_1, ..., x_m], dim=unit axis)`` with ``x_i`` carrying the units
of group ``G_i`` (``n_i`` units) carries the disjoint union of the groups: a
permutation of ``y``'s units is the block permutation
``pi_1 (+) ... (+) pi_m`` (unit ``j`` of part ``i`` goes where ``pi_i`` sends
it, inside part ``i``'s range). No new group is made: the value keeps the
parts (``Val.parts``), and a layer that reads it gets an input axis with one
*segment* per part -- the fused-axis form the spec already has -- so that a
consumer weight ``W`` of shape ``(out, sum n_i)`` is permuted as
``W[:, pi_1 (+) ... (+) pi_m]`` and splits into one graph block per part,
with edges from each part's own site.

This module holds the op rules for values with parts (elementwise ops,
pooling, reductions, reshapes that keep the unit axis outermost, transposes,
further concatenations, splits at part boundaries); the layer rules are in
:mod:`wsl.space.concat_layers`. Whatever is not listed is refused: a rule
written for one group would see no units in a concatenation.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from wsl.errors import UnsupportedLayerError
from wsl.space import shape_ops
from wsl.space.builder import SpecBuilder, Val

#: Ops that act on every unit alike (the names of :mod:`wsl.space.ops`).
ELEMENTWISE = {"relu", "relu6", "gelu", "tanh", "sigmoid", "silu", "leaky_relu", "elu", "selu", "celu", "softplus",
               "mish", "hardswish", "hardsigmoid", "hardtanh", "dropout", "dropout1d", "dropout2d", "dropout3d",
               "alpha_dropout", "feature_alpha_dropout", "contiguous", "float", "double", "half", "bfloat16", "to",
               "type", "type_as", "clone", "detach", "cpu", "cuda", "neg", "abs", "exp", "sqrt", "square", "erf",
               "expand", "softsign", "tanhshrink", "logsigmoid"}
BINARY = {"add", "sub", "mul", "truediv", "div", "rsub", "radd", "rmul", "rtruediv"}


def _part_size(factors: tuple) -> int:
    return math.prod(f[1] for f in factors)


def _refuse(path: str, name: str, why: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(path, f"function '{name}'", f"{why} (on a concatenation of unit groups)")


def _unit_val(b: SpecBuilder, v: Any, dim: int, path: str) -> Val | None:
    """``v`` as a unit value whose units lie on ``dim`` (raw network inputs are resolved there)."""
    if not isinstance(v, Val):
        return None
    v = b.resolve_raw(v)
    if v.raw is not None and 0 <= dim < v.ndim:
        v = b.resolve_raw_at(v, dim, path)
    return v if v.has_units else None


def join(b: SpecBuilder, path: str, items: list[Any], dim: int, out: torch.Tensor) -> Val:
    """``torch.cat(items, dim)`` along the unit axis: the parts of every operand, in order."""
    parts: list[tuple[int, tuple]] = []
    for v in items:
        u = _unit_val(b, v, dim, path)
        if u is None:
            what = f"parameter '{v.param}'" if isinstance(v, Val) and v.param else "a constant"
            raise _refuse(path, "cat", f"joins {what} to the units; it would have to be permuted with them")
        if u.fdim != dim:
            raise _refuse(path, "cat", f"an operand carries its units on dim {u.fdim}, not on the joined dim {dim}")
        if u.parts:
            parts.extend(u.parts)
        else:
            assert u.site is not None
            parts.append((u.site, tuple(u.factors)))
    total = sum(_part_size(f) for _, f in parts)
    if total != out.shape[dim]:
        raise _refuse(path, "cat", f"parts of {total} units make a dim of {out.shape[dim]}")
    if len(parts) == 1:
        return Val(shape=tuple(out.shape), site=parts[0][0], fdim=dim, factors=parts[0][1])
    return Val(shape=tuple(out.shape), fdim=dim, parts=tuple(parts))


def _flat(xs: Any) -> list[Any]:
    out: list[Any] = []
    for x in xs if isinstance(xs, (list, tuple)) else [xs]:
        out.extend(_flat(x) if isinstance(x, (list, tuple)) else [x])
    return out


def _constant_along(path: str, name: str, u: Val, other: Any) -> None:
    """Refuse an operand that varies along the units (it would have to be permuted with them)."""
    if not isinstance(other, Val):
        return
    if other.has_units or other.raw or other.param:
        raise _refuse(path, name, "combines the units with another unit tensor, input or parameter")
    assert u.fdim is not None
    d = u.fdim - (u.ndim - other.ndim)
    if 0 <= d < other.ndim and other.shape[d] != 1:
        raise _refuse(path, name, "combines the units with a constant that varies along them")


def _same_layout(u: Val, w: Val) -> bool:
    return (u.ndim - (u.fdim or 0) == w.ndim - (w.fdim or 0)
            and [_part_size(f) for f in u.segments] == [_part_size(f) for f in w.segments])


def _binary(b: SpecBuilder, path: str, name: str, a: Any, c: Any, out: torch.Tensor) -> Val:
    shape = tuple(out.shape)
    units = [v for v in (a, c) if isinstance(v, Val) and v.has_units]
    u = units[0]
    fdim = (u.fdim or 0) + len(shape) - u.ndim
    if len(units) == 1:
        _constant_along(path, name, u, c if a is u else a)
        return u.with_(shape=shape, fdim=fdim)
    w = units[1]
    if not (u.parts and w.parts and _same_layout(u, w)):
        raise _refuse(path, name, "combines two unit tensors whose parts differ")
    if u.parts == w.parts:
        return u.with_(shape=shape, fdim=fdim)
    kind = "residual" if name in ("add", "sub", "radd", "rsub") else "product"
    parts = []
    for (su, fu), (sw, fw) in zip(u.parts, w.parts):
        if len(fu) != 1 or len(fw) != 1:
            raise _refuse(path, name, "combines flattened parts")
        g = b.tie(fu[0][0], fw[0][0], path)
        site = b.new_site(g, path, "add" if kind == "residual" else "product", max(b.depth(su), b.depth(sw)))
        b.connect(kind, su, site, path)
        b.connect(kind, sw, site, path)
        parts.append((site, fu))
    return Val(shape=shape, fdim=fdim, parts=tuple(parts))


def _reshape(path: str, name: str, x: Val, out: torch.Tensor) -> Val:
    """A reshape that keeps the unit axis outermost among the dims it merges (e.g. flatten after pooling)."""
    shape = tuple(out.shape)
    assert x.fdim is not None
    if any(len(f) != 1 for _, f in x.parts):
        raise _refuse(path, name, "reshapes parts that are already flattened")
    total = sum(_part_size(f) for _, f in x.parts)
    r = shape_ops.reshape_fdim(x.shape, shape, x.fdim, ((-1, total),))
    if r is None or r[1][0][0] is None:
        raise _refuse(path, name, f"reshape {x.shape} -> {shape} splits or interleaves the unit axis")
    inner = r[1][1:]
    return x.with_(shape=shape, fdim=r[0], parts=tuple((s, tuple(f) + tuple(inner)) for s, f in x.parts))


def _split(path: str, name: str, x: Val, args: tuple, kwargs: dict, out: Any) -> Any:
    """Splits along the unit axis at part boundaries give the parts back; other splits keep them."""
    dim = int(kwargs.get("dim", args[2] if len(args) > 2 else 0)) % x.ndim if name != "unbind" else None
    if dim != x.fdim:
        return shape_ops.split(path, name, x, args, kwargs, out)
    bounds, pos = [], 0
    for _, f in x.parts:
        pos += _part_size(f)
        bounds.append(pos)
    res, start, i = [], 0, 0
    for o in out:
        stop = start + int(o.shape[dim])
        chunk = []
        while i < len(x.parts) and bounds[i] <= stop:
            chunk.append(x.parts[i])
            i += 1
        if sum(_part_size(f) for _, f in chunk) != stop - start:
            raise _refuse(path, name, "splits the unit axis inside a concatenated part")
        v = Val(shape=tuple(o.shape), fdim=x.fdim, parts=tuple(chunk))
        res.append(v.with_(site=chunk[0][0], factors=chunk[0][1], parts=()) if len(chunk) == 1 else v)
        start = stop
    return tuple(res)


def handle_parts(b: SpecBuilder, path: str, name: str, family: str, args: tuple, kwargs: dict, vargs: tuple,
                 vkwargs: dict, out: Any) -> Any:
    """The rule of op ``name`` when some operand is a concatenation (``Val.parts``).

    ``family`` is ``"pool"`` or ``"reduce"`` for the ops :mod:`wsl.space.ops` lists as such, else ``""``.
    """
    x = vargs[0] if vargs else None
    if name in ("cat", "stack"):
        items = list(vargs[0])
        dim = int(kwargs.get("dim", args[1] if len(args) > 1 else 0))
        first = next(v for v in items if isinstance(v, Val) and v.has_units)
        dim %= first.ndim + (1 if name == "stack" else 0)
        if name == "cat" and dim == first.fdim:
            return join(b, path, items, dim, out)
        if any(not (isinstance(v, Val) and v.parts == first.parts and v.fdim == first.fdim) for v in items):
            raise _refuse(path, name, "joins tensors with different units along a non-unit dim")
        assert first.fdim is not None
        return first.with_(shape=tuple(out.shape), fdim=first.fdim + (1 if name == "stack" and dim <= first.fdim
                                                                      else 0))
    if not isinstance(x, Val):
        if name in BINARY and len(vargs) > 1:
            return _binary(b, path, name, x, vargs[1], out)
        raise _refuse(path, name, "its first operand is not a traced tensor")
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if name in ELEMENTWISE or (name in ("softmax", "log_softmax")):
        assert shape is not None and x.fdim is not None
        for other in _flat(list(vargs[1:]) + list(vkwargs.values())):
            _constant_along(path, name, x, other)
        return x.with_(shape=shape, fdim=x.fdim + len(shape) - x.ndim)
    if name in BINARY:
        return _binary(b, path, name, x, vargs[1] if len(vargs) > 1 else vkwargs.get("other"), out)
    if family == "pool":
        if x.fdim != 1:
            raise _refuse(path, name, f"pools over spatial dims but the units are on dim {x.fdim}")
        return x.with_(shape=shape)
    if family == "reduce":
        return shape_ops.reduce(path, name, x, args, kwargs, out)
    if name in ("flatten", "view", "reshape", "unflatten", "squeeze", "unsqueeze"):
        return _reshape(path, name, x, out)
    if name in ("transpose", "permute", "movedim", "t"):
        return shape_ops.transpose(path, name, x, args[1:], kwargs, out)
    if name == "getitem":
        return shape_ops.getitem(path, x, args[1], out)
    if name in ("split", "chunk", "tensor_split"):
        return _split(path, name, x, args, kwargs, out)
    raise _refuse(path, name, "wsl has no rule for this operation")

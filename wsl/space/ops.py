"""Symmetry rules for functional operations (``call_function``/``call_method``).

Unit-carrying tensors keep their site through elementwise ops, pooling,
dropout and reshapes that do not split the unit axis. Additions and products
of two unit-carrying tensors *tie* their groups (a residual connection forces
both operands into one group) and open a new site joined by identity edges.
Reductions over the unit axis produce unit-free (invariant) tensors. A
parameter read directly (``x + self.pos_embedding``) is recorded with the
unit axis it is broadcast against. A concatenation along the unit axis keeps
its operands' groups as parts (:mod:`wsl.space.concat`). Anything else -- a
matmul between activations outside a known attention layer, indexing single
units -- raises :class:`UnsupportedLayerError`.
"""

from __future__ import annotations

from typing import Any

import torch

from wsl.errors import UnsupportedLayerError
from wsl.space import concat, param_view, shape_ops, token_mixing
from wsl.space.builder import SpecBuilder, Val
from wsl.space.shape_ops import group_factor

UNARY = {
    "relu", "relu6", "gelu", "tanh", "sigmoid", "silu", "leaky_relu", "elu", "selu", "celu", "softplus",
    "mish", "hardswish", "hardsigmoid", "hardtanh", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "sin", "cos", "exp", "log", "abs", "neg", "sqrt", "rsqrt",
    "square", "erf", "softmax", "log_softmax", "contiguous", "float", "double", "half",
    "bfloat16", "to", "type", "type_as", "clone", "detach", "cpu", "cuda", "sign", "reciprocal",
    "tanhshrink", "softsign", "logsigmoid", "normalize", "requires_grad", "pos", "logical_not",
}
#: Elementwise ops whose further tensor operands (a mask, a bound, a branch) meet the units one to one.
NARY = {"masked_fill", "clamp", "clip", "clamp_min", "clamp_max", "where", "lerp", "addcmul", "addcdiv"}
ACTIVATIONS = {"relu", "relu6", "gelu", "tanh", "sigmoid", "silu", "leaky_relu", "elu", "selu", "celu",
               "softplus", "mish", "hardswish", "hardsigmoid", "hardtanh", "sin", "cos", "exp", "log", "abs",
               "sqrt", "square", "erf", "tanhshrink", "softsign", "logsigmoid"}
BINARY = {"add", "sub", "mul", "truediv", "div", "rsub", "radd", "rmul", "rtruediv", "pow", "maximum",
          "minimum", "floordiv", "iadd", "isub", "imul", "itruediv", "gt", "lt", "ge", "le", "eq", "ne"}
POOLS = {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
         "adaptive_max_pool2d", "adaptive_max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
         "max_pool1d", "max_pool2d", "max_pool3d", "lp_pool1d", "lp_pool2d", "interpolate", "upsample"}
REDUCE = {"mean", "sum", "amax", "amin", "logsumexp", "std", "var", "nansum", "nanmean"}
META = {"size", "dim", "getattr", "numel", "len", "ndimension", "is_floating_point", "nelement"}


def op_name(target: Any) -> str:
    name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    name = name.strip("_")
    if name in ("iadd", "isub", "imul", "itruediv"):
        name = name[1:]
    return {"concat": "cat", "concatenate": "cat", "divide": "div", "multiply": "mul", "subtract": "sub",
            "swapaxes": "transpose", "swapdims": "transpose", "expand_as": "expand"}.get(name, name)


def handle(b: SpecBuilder, path: str, target: Any, args: tuple, kwargs: dict, vargs: tuple, vkwargs: dict,
           out: Any) -> Any:
    name = op_name(target)
    vargs = tuple(_resolve(b, v) for v in vargs)
    vkwargs = {k: _resolve(b, v) for k, v in vkwargs.items()}
    vals = [v for v in _flat(vargs) + _flat(list(vkwargs.values())) if isinstance(v, Val)]
    if name in META or not _has_tensor(out):
        return None
    if any(v.side is not None for v in vals):  # token-mixing hidden units on a second axis
        return token_mixing.handle_side(path, name, args, kwargs, vargs, vkwargs, out)
    if any(v.parts for v in vals):  # an operand concatenated along its units
        family = "pool" if name in POOLS else "reduce" if name in REDUCE else ""
        return concat.handle_parts(b, path, name, family, args, kwargs, vargs, vkwargs, out)
    if not any(v.site is not None or v.raw or v.param for v in vals):
        return _const(out, vals)
    x = vargs[0] if vargs else None
    if name in NARY:
        return _nary(b, path, name, _flat(vargs) + _flat(list(vkwargs.values())), out)
    if name in UNARY or (name == "expand"):
        if name in ACTIVATIONS:
            b.activations.add(name)
        return _unary(path, name, x, out)
    if name in BINARY:
        return _binary(b, path, name, vargs[0], vargs[1] if len(vargs) > 1 else vkwargs.get("other"), out)
    if name in POOLS:
        if isinstance(x, Val) and x.site is not None and x.fdim != 1:
            raise UnsupportedLayerError(path, name, f"pools over spatial dims but the units are on dim {x.fdim}")
        return x.with_(shape=tuple(out.shape)) if isinstance(x, Val) else None
    if name in REDUCE:
        return shape_ops.reduce(path, name, x, args, kwargs, out)
    if name in ("flatten", "view", "reshape", "unflatten", "squeeze", "unsqueeze"):
        return shape_ops.reshape(path, name, x, out)
    if name in ("transpose", "permute", "movedim", "t"):
        return shape_ops.transpose(path, name, x, args[1:], kwargs, out)
    if name == "getitem":
        return shape_ops.getitem(path, x, args[1], out)
    if name in ("cat", "stack"):
        return _join(b, path, name, args, kwargs, vargs, out)
    if name in ("split", "chunk", "unbind", "tensor_split"):
        return shape_ops.split(path, name, x, args, kwargs, out)
    if name == "pad":
        return shape_ops.pad(path, x, args, kwargs, out)
    raise UnsupportedLayerError(path, f"function '{name}'", "wsl has no symmetry rule for this operation")


def _resolve(b: SpecBuilder, v: Any) -> Any:
    if isinstance(v, Val):
        return b.resolve_raw(v)
    if isinstance(v, (list, tuple)) and not hasattr(v, "_fields"):
        return type(v)(_resolve(b, x) for x in v)
    return v


def _flat(xs: Any) -> list[Any]:
    out: list[Any] = []
    for x in xs if isinstance(xs, (list, tuple)) else [xs]:
        if isinstance(x, (list, tuple)):
            out.extend(_flat(x))
        else:
            out.append(x)
    return out


def _has_tensor(out: Any) -> bool:
    return any(isinstance(o, torch.Tensor) for o in _flat(out))


def _const(out: Any, vals: list[Val]) -> Any:
    if isinstance(out, (tuple, list)):
        return type(out)(_const(o, vals) for o in out) if not hasattr(out, "_fields") else tuple(_const(o, vals) for o in out)
    if not isinstance(out, torch.Tensor):
        return None
    return Val(shape=tuple(out.shape), ids=not out.is_floating_point())


def _shape(out: Any) -> tuple[int, ...]:
    return tuple(out.shape)


def _unary(path: str, name: str, x: Any, out: Any) -> Any:
    if not isinstance(x, Val):
        raise UnsupportedLayerError(path, f"function '{name}'", "first argument is not a traced tensor")
    shape = _shape(out)
    if x.fdim is not None:
        return x.with_(shape=shape, fdim=x.fdim + len(shape) - x.ndim)
    return x.with_(shape=shape)


def _align(u: Val, other_ndim: int) -> int:
    """Index in a tensor with ``other_ndim`` dims of the dim aligned (from the right) with u's unit dim."""
    assert u.fdim is not None
    return u.fdim - (u.ndim - other_ndim)


def _binary(b: SpecBuilder, path: str, name: str, a: Any, c: Any, out: Any) -> Val:
    shape = _shape(out)
    vals = [v for v in (a, c) if isinstance(v, Val)]
    units = [v for v in vals if v.site is not None]
    raws = [v for v in vals if v.raw]
    params = [v for v in vals if v.param and v.site is None]
    if raws and len(units) == 1 and len(raws) == 1 and not params:
        r, u = raws[0], units[0]
        d = _align(u, r.ndim)
        if 0 <= d < r.ndim and r.shape[d] == u.shape[u.fdim or 0]:
            resolved = b.resolve_raw_at(r, d, path)
            return _binary(b, path, name, resolved if a is r else a, resolved if c is r else c, out)
    if raws:
        if units or params or len(raws) > 1:
            raise UnsupportedLayerError(path, f"function '{name}'", "combines a raw network input with other units")
        return raws[0].with_(shape=shape)
    if len(units) == 2:
        u, w = units
        if u.ndim - (u.fdim or 0) != w.ndim - (w.fdim or 0) or group_factor(u.factors)[0::2] != group_factor(w.factors)[0::2]:
            raise UnsupportedLayerError(path, f"function '{name}'", "operands carry units on different axes")
        fdim = (u.fdim or 0) + len(shape) - u.ndim
        if u.site == w.site:
            return u.with_(shape=shape, fdim=fdim)
        g = b.tie(group_factor(u.factors)[1], group_factor(w.factors)[1], path)
        kind = "residual" if name in ("add", "sub", "radd", "rsub") else "product"
        site = b.new_site(g, path, "add" if kind == "residual" else "product", max(b.depth(u.site), b.depth(w.site)))
        b.connect(kind, u.site, site, path)
        b.connect(kind, w.site, site, path)
        return Val(shape=shape, site=site, fdim=fdim, factors=u.factors)
    if len(units) == 1:
        u = units[0]
        other = c if a is u else a
        fdim = (u.fdim or 0) + len(shape) - u.ndim
        site = u.site
        if isinstance(other, Val) and other.param:
            role = "add" if name in ("add", "sub", "radd", "rsub") else "mul"
            site = param_into(b, path, u, other, role)
        elif isinstance(other, Val):
            d = _align(u, other.ndim)
            if 0 <= d < other.ndim and other.shape[d] != 1:
                raise UnsupportedLayerError(path, f"function '{name}'",
                                            "combines the units with a constant tensor that varies along them")
        return u.with_(shape=shape, fdim=fdim, site=site)
    if params:  # arithmetic on a parameter alone (e.g. a scaled embedding table)
        raise UnsupportedLayerError(path, f"function '{name}'", f"arithmetic on parameter '{params[0].param}' "
                                    "before it meets the activations")
    return Val(shape=shape)


def _nary(b: SpecBuilder, path: str, name: str, operands: list[Any], out: Any) -> Val:
    """``masked_fill``, ``clamp``, ``where``, ...: every tensor operand meets the units elementwise.

    Operands that carry units are tied into one group (as a residual addition
    would); a parameter, network input or constant that varies along the unit
    axis would have to be permuted with the units, so it is refused.
    """
    shape = _shape(out)
    vals = [v for v in operands if isinstance(v, Val)]
    units = [v for v in vals if v.site is not None]
    if not units:
        lead = next((v for v in vals if v.raw or v.param), None)
        if lead is None or any(v is not lead and (v.raw or v.param) for v in vals):
            raise UnsupportedLayerError(path, f"function '{name}'", "combines raw inputs or parameters elementwise")
        return lead.with_(shape=shape)
    u = units[0]
    fdim = (u.fdim or 0) + len(shape) - u.ndim
    result = u.with_(shape=shape, fdim=fdim)
    for w in units[1:]:
        if w.site != result.site:
            result = _binary(b, path, name, result, w.with_(shape=shape, fdim=(w.fdim or 0) + len(shape) - w.ndim),
                             out)
    for v in vals:
        if v.site is not None:
            continue
        d = _align(result, v.ndim)
        varies = 0 <= d < v.ndim and v.shape[d] != 1
        what = f"parameter '{v.param}'" if v.param else "a network input" if v.raw else "a constant tensor"
        if varies or v.raw:
            raise UnsupportedLayerError(path, f"function '{name}'", f"its operand {what} of shape {v.shape} varies "
                                        "along the units; a per-unit mask or bound is not supported")
        if v.param:
            b.extras.append(v.param)  # constant along the units: no permutation touches it
    return result


def param_into(b: SpecBuilder, path: str, u: Val, p: Val, role: str) -> int:
    """Record parameter ``p`` combined with unit tensor ``u``; returns u's (possibly new) site."""
    name = p.param
    assert name is not None and u.site is not None
    pshape = b.param_shapes[name]
    d = _align(u, p.ndim)
    if not param_view.broadcasts(pshape, p.shape):  # read through a view (e.g. gamma.reshape(1, -1, 1, 1))
        view_d = param_view.stored_dim(pshape, p.shape, d)
        if view_d is None:
            raise UnsupportedLayerError(path, "parameter", f"'{name}' is reshaped before use")
        d = view_d
    if d < 0 or pshape[d] == 1:
        b.extras.append(name)  # constant along the units: not touched by permutations
        return u.site
    outer, g, n, inner = group_factor(u.factors)
    if (outer, inner) != (1, 1) or pshape[d] != n:
        raise UnsupportedLayerError(path, "parameter", f"'{name}' of shape {pshape} does not match the units")
    others = [i for i in range(len(pshape)) if i != d and pshape[i] > 1]
    buffer = name in b.buffer_names
    if not others and role != "cat":
        axes = tuple(((((g, n),),) if i == d else (((None, pshape[i]),),)) for i in range(len(pshape)))
        slot = "bias" if role == "add" else "scale"
        b.add_tensor(name, pshape, slot, path, f"param_{role}", axes, buffer=buffer)
        return b.attach(u.site, slot, name, path, part=(0,) * len(pshape))
    cand = [i for i in range(len(pshape)) if i != d]
    s = max(cand, key=lambda i: (pshape[i], -abs(i - d)))
    src_g = b.new_group(pshape[s], "token", name, fixed=True)
    src = b.new_site(src_g, name, "source", 0)
    axes = tuple(
        (((g, n),),) if i == d else ((((src_g, pshape[i]),),) if i == s else (((None, pshape[i]),),))
        for i in range(len(pshape))
    )
    b.add_tensor(name, pshape, "embedding" if role != "mul" else "scale", path, f"param_{role}", axes, buffer=buffer)
    b.connect(f"param_{role}", src, u.site, path, tensor=name, part=(0,) * len(pshape),
              src_axis=0 if s < d else 1, dst_axis=1 if s < d else 0)
    return u.site


def _join(b: SpecBuilder, path: str, name: str, args: tuple, kwargs: dict, vargs: tuple, out: Any) -> Val:
    shape = _shape(out)
    items = list(vargs[0])
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    units = [v for v in items if isinstance(v, Val) and v.site is not None]
    if not units:
        if any(isinstance(v, Val) and (v.raw or v.param) for v in items):
            raise UnsupportedLayerError(path, f"function '{name}'", "joins raw inputs or parameters")
        return Val(shape=shape)
    u = units[0]
    nd = u.ndim
    dim = int(dim) % (nd + (1 if name == "stack" else 0))
    assert u.fdim is not None
    if name == "cat" and dim == u.fdim:
        return concat.join(b, path, items, dim, out)
    for w in units[1:]:
        if w.fdim != u.fdim:
            raise UnsupportedLayerError(path, f"function '{name}'", "operands carry units on different axes")
    fdim = u.fdim + (1 if name == "stack" and dim <= u.fdim else 0)
    sites = list(dict.fromkeys(w.site for w in units))
    site = u.site
    assert site is not None
    if len(sites) > 1:
        g = group_factor(u.factors)[1]
        for w in units[1:]:
            g = b.tie(g, group_factor(w.factors)[1], path)
        site = b.new_site(g, path, "concat", max(b.depth(s) for s in sites))
        for s in sites:
            b.connect("concat", s, site, path)
    for v in items:
        if isinstance(v, Val) and v.param and v.site is None:
            site = param_into(b, path, u.with_(site=site), v, "cat")
        elif isinstance(v, Val) and v.site is None and v.ndim > u.fdim and v.shape[u.fdim] != 1:
            raise UnsupportedLayerError(path, f"function '{name}'", "joins the units with a constant that varies along them")
    return Val(shape=shape, site=site, fdim=fdim, factors=u.factors)



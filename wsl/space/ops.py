"""Symmetry rules for functional operations (``call_function``/``call_method``).

Unit-carrying tensors keep their site through elementwise ops, pooling,
dropout and reshapes that do not split the unit axis. Additions and products
of two unit-carrying tensors *tie* their groups (a residual connection forces
both operands into one group) and open a new site joined by identity edges.
Reductions over the unit axis produce unit-free (invariant) tensors. A
parameter read directly (``x + self.pos_embedding``) is recorded with the
unit axis it is broadcast against. Anything else -- a matmul between
activations outside a known attention layer, a concatenation along the unit
axis, indexing single units -- raises :class:`UnsupportedLayerError`.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from wsl.errors import UnsupportedLayerError
from wsl.space.builder import SpecBuilder, Val

UNARY = {
    "relu", "relu6", "gelu", "tanh", "sigmoid", "silu", "leaky_relu", "elu", "selu", "celu", "softplus",
    "mish", "hardswish", "hardsigmoid", "hardtanh", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "sin", "cos", "exp", "log", "abs", "neg", "sqrt", "rsqrt",
    "square", "erf", "clamp", "clip", "softmax", "log_softmax", "contiguous", "float", "double", "half",
    "bfloat16", "to", "type", "type_as", "clone", "detach", "cpu", "cuda", "sign", "reciprocal",
    "tanhshrink", "softsign", "logsigmoid", "normalize", "masked_fill", "requires_grad", "pos",
}
ACTIVATIONS = {"relu", "relu6", "gelu", "tanh", "sigmoid", "silu", "leaky_relu", "elu", "selu", "celu",
               "softplus", "mish", "hardswish", "hardsigmoid", "hardtanh", "sin", "cos", "exp", "log", "abs",
               "sqrt", "square", "erf", "tanhshrink", "softsign", "logsigmoid"}
BINARY = {"add", "sub", "mul", "truediv", "div", "rsub", "radd", "rmul", "rtruediv", "pow", "maximum",
          "minimum", "floordiv", "iadd", "isub", "imul", "itruediv"}
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
    if not any(v.site is not None or v.raw or v.param for v in vals):
        return _const(out, vals)
    x = vargs[0] if vargs else None
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
        return _reduce(path, name, x, args, kwargs, out)
    if name in ("flatten", "view", "reshape", "unflatten", "squeeze", "unsqueeze"):
        return _reshape(path, name, x, out)
    if name in ("transpose", "permute", "movedim", "t"):
        return _transpose(path, name, x, args[1:], kwargs, out)
    if name == "getitem":
        return _getitem(path, x, args[1], out)
    if name in ("cat", "stack"):
        return _join(b, path, name, args, kwargs, vargs, out)
    if name in ("split", "chunk", "unbind", "tensor_split"):
        return _split(path, name, x, args, kwargs, out)
    if name == "pad":
        return _pad(path, x, args, kwargs, out)
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


def _group_factor(factors: tuple) -> tuple[int, int, int, int]:
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
        if u.ndim - (u.fdim or 0) != w.ndim - (w.fdim or 0) or _group_factor(u.factors)[0::2] != _group_factor(w.factors)[0::2]:
            raise UnsupportedLayerError(path, f"function '{name}'", "operands carry units on different axes")
        fdim = (u.fdim or 0) + len(shape) - u.ndim
        if u.site == w.site:
            return u.with_(shape=shape, fdim=fdim)
        g = b.tie(_group_factor(u.factors)[1], _group_factor(w.factors)[1], path)
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


def param_into(b: SpecBuilder, path: str, u: Val, p: Val, role: str) -> int:
    """Record parameter ``p`` combined with unit tensor ``u``; returns u's (possibly new) site."""
    name = p.param
    assert name is not None and u.site is not None
    pshape = b.param_shapes[name]
    if len(pshape) != p.ndim:
        raise UnsupportedLayerError(path, "parameter", f"'{name}' is reshaped before use")
    d = _align(u, p.ndim)
    if d < 0 or pshape[d] == 1:
        b.extras.append(name)  # constant along the units: not touched by permutations
        return u.site
    outer, g, n, inner = _group_factor(u.factors)
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


def _reduce(path: str, name: str, x: Any, args: tuple, kwargs: dict, out: Any) -> Any:
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
    outer, g, n, inner_f = _group_factor(factors)
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


def _reshape(path: str, name: str, x: Any, out: Any) -> Any:
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


def _transpose(path: str, name: str, x: Any, rest: tuple, kwargs: dict, out: Any) -> Any:
    if not isinstance(x, Val):
        return None
    shape = _shape(out)
    if x.fdim is None:
        return x.with_(shape=shape)
    n = x.ndim
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
    return x.with_(shape=shape, fdim=order.index(x.fdim))


def _getitem(path: str, x: Any, idx: Any, out: Any) -> Any:
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
        raise UnsupportedLayerError(path, "function 'cat'", "concatenation along the unit axis is not supported")
    for w in units[1:]:
        if w.fdim != u.fdim:
            raise UnsupportedLayerError(path, f"function '{name}'", "operands carry units on different axes")
    fdim = u.fdim + (1 if name == "stack" and dim <= u.fdim else 0)
    sites = list(dict.fromkeys(w.site for w in units))
    site = u.site
    assert site is not None
    if len(sites) > 1:
        g = _group_factor(u.factors)[1]
        for w in units[1:]:
            g = b.tie(g, _group_factor(w.factors)[1], path)
        site = b.new_site(g, path, "concat", max(b.depth(s) for s in sites))
        for s in sites:
            b.connect("concat", s, site, path)
    for v in items:
        if isinstance(v, Val) and v.param and v.site is None:
            site = param_into(b, path, u.with_(site=site), v, "cat")
        elif isinstance(v, Val) and v.site is None and v.ndim > u.fdim and v.shape[u.fdim] != 1:
            raise UnsupportedLayerError(path, f"function '{name}'", "joins the units with a constant that varies along them")
    return Val(shape=shape, site=site, fdim=fdim, factors=u.factors)


def _split(path: str, name: str, x: Any, args: tuple, kwargs: dict, out: Any) -> Any:
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


def _pad(path: str, x: Any, args: tuple, kwargs: dict, out: Any) -> Any:
    if not isinstance(x, Val):
        return None
    pad = kwargs.get("pad", args[1] if len(args) > 1 else ())
    k = len(pad) // 2
    if x.fdim is not None and x.site is not None and x.fdim >= x.ndim - k:
        i = x.ndim - 1 - x.fdim
        if pad[2 * i] or pad[2 * i + 1]:
            raise UnsupportedLayerError(path, "function 'pad'", "pads the unit axis")
    return x.with_(shape=_shape(out))

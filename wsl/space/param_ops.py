"""Parameters read directly by operations (not by a layer): broadcast into units, mapped, looked up.

* :func:`param_into`: ``x + p``, ``x * p``, ``cat([p, x])`` -- the parameter is
  recorded with the unit axis it is broadcast against (a node feature when it
  has no other axis of size > 1, else edges from a fixed source of tokens:
  learned position embeddings, class tokens);
* :func:`param_elementwise`: ``1 + w``, ``w.float()`` -- a parameter through an
  elementwise map of its own values is still that parameter (a permutation of
  its entries commutes with the map);
* :func:`param_lookup`: ``table[ids]``, ``table[:, ids]`` -- rows or columns of
  a 2-D parameter picked by an integer tensor: an embedding lookup.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from wsl.errors import UnsupportedLayerError
from wsl.space import functional_layers, param_view
from wsl.space.builder import SpecBuilder, Val
from wsl.space.flat_norm import flat_norm_factors
from wsl.space.shape_ops import group_factor


def _align(u: Val, other_ndim: int) -> int:
    """Index in a tensor with ``other_ndim`` dims of the dim aligned (from the right) with u's unit dim."""
    assert u.fdim is not None
    return u.fdim - (u.ndim - other_ndim)


def _flat(xs: Any) -> list[Any]:
    out: list[Any] = []
    for x in xs if isinstance(xs, (list, tuple)) else [xs]:
        out.extend(_flat(x) if isinstance(x, (list, tuple)) else [x])
    return out


def param_into(b: SpecBuilder, path: str, u: Val, p: Val, role: str) -> int:
    """Record parameter ``p`` combined with unit tensor ``u``; returns u's (possibly new) site."""
    name = p.param
    assert name is not None and u.site is not None
    pshape = b.param_shapes[name]
    d = _align(u, p.ndim)
    lead = p.ndim - len(pshape)  # leading dims added by broadcasting (expand, unsqueeze(0))
    if lead >= 0 and all(q in (1, n) for q, n in zip(pshape, p.shape[lead:])):
        d -= lead
    else:  # read through a view that adds or drops singleton dims (e.g. gamma.reshape(1, -1, 1, 1))
        view_d = param_view.stored_dim(pshape, p.shape, d)
        if view_d is None:
            raise UnsupportedLayerError(path, "parameter", f"'{name}' is reshaped before use")
        d = view_d
    if d < 0 or pshape[d] == 1:
        b.extras.append(name)  # constant along the units: not touched by permutations
        return u.site
    others = [i for i in range(len(pshape)) if i != d and pshape[i] > 1]
    buffer = name in b.buffer_names
    if len(u.factors) > 1 and not others and role != "cat" and pshape[d] == math.prod(f[1] for f in u.factors):
        # one value per entry of a flattened (positions x units) axis, e.g. an RMSNorm's weight after Swin's
        # patch merging: elementwise, so it permutes like the axis (wsl.space.flat_norm)
        fac = flat_norm_factors(u.factors, path, "parameter", f"'{name}'")
        axes = tuple((fac,) if i == d else (((None, pshape[i]),),) for i in range(len(pshape)))
        slot = "bias" if role == "add" else "scale"
        b.add_tensor(name, pshape, slot, path, f"param_{role}", axes, buffer=buffer)
        return b.attach(u.site, slot, name, path, part=(0,) * len(pshape))
    outer, g, n, inner = group_factor(u.factors)
    if (outer, inner) != (1, 1) or pshape[d] != n:
        raise UnsupportedLayerError(path, "parameter", f"'{name}' of shape {pshape} does not match the units")
    if not others and (role != "cat" or len(pshape) == 1):  # (a vector joined as one more token: a node feature)
        axes = tuple(((((g, n),),) if i == d else (((None, pshape[i]),),)) for i in range(len(pshape)))
        slot = "bias" if role in ("add", "cat") else "scale"
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


def param_elementwise(name: str, vargs: tuple, vkwargs: dict, out: Any, unary: set[str], binary: set[str]
                      ) -> Val | None:
    """A parameter through an elementwise map of its own values (``1 + w``, ``w.float()``) stays that
    parameter: a permutation of its entries commutes with the map."""
    vals = [v for v in _flat(vargs) + _flat(list(vkwargs.values())) if isinstance(v, Val)]
    params = [v for v in vals if v.param]
    if len(params) != 1 or not isinstance(out, torch.Tensor) or tuple(out.shape) != params[0].shape:
        return None
    if name in unary or (name in binary and all(v is params[0] or v.ndim == 0 for v in vals)):
        return params[0]
    return None


def param_lookup(b: SpecBuilder, path: str, args: tuple, vargs: tuple, out: Any) -> Val:
    """``table[ids]`` or ``table[:, ids]`` (ATen ``index``) on a 2-D parameter with one integer index: an
    embedding lookup (relative-position bias tables indexed by position pairs, per head)."""
    idx, vidx = list(args[1]), list(vargs[1])
    at = [i for i, t in enumerate(idx) if t is not None]
    if args[0].dim() != 2 or len(at) != 1 or len(idx) > 2 or not isinstance(vidx[at[0]], Val) \
            or not vidx[at[0]].ids:
        raise UnsupportedLayerError(path, "function 'index'", "indexes a parameter other than by one integer "
                                    "tensor along one of its two dims")
    return functional_layers.embedding(b, path, vargs[0], vidx[at[0]], args[0], out, dim=at[0])

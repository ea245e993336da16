"""Layers written as functions of parameters: ``F.linear(x, W, b)``, ``addmm``, ``x @ W``, ``F.embedding``, norms.

The rules of :mod:`wsl.space.handlers` read a layer module; these read the
same operations when a network calls them on its parameters directly (the
output projection inside ``nn.MultiheadAttention``, Hugging Face's
``Conv1D``: ``addmm(b, x, W)``, a tied ``lm_head`` written as
``F.linear(h, wte.weight)``), and every layer of a program captured by
``torch.export``. They record the same tensors, sites and connections:

* ``linear(x, W, b)``: ``W`` is ``(out, in)``: a new group of ``out`` units;
  ``addmm(b, x, W)`` and ``x @ W`` take ``W`` as ``(in, out)``;
* ``embedding(W, ids)``: rows index tokens (a fixed group), columns a new group;
* ``layer_norm(x, (C,), W, b)`` and ``rms_norm(x, (C,), W)``: per-unit scale
  and shift of the last dim's units (node features);
* ``group_norm(x, G, W, b)``: channels (dim 1) nested in ``G`` blocks when ``1 < G < C``.

Their weights must be parameters read as they are (no arithmetic before the
layer): anything computed is refused, naming the operation.
"""

from __future__ import annotations

from typing import Any

import torch

from wsl.errors import UnsupportedLayerError
from wsl.space.builder import SpecBuilder, Val
from wsl.space.flat_norm import flat_norm_factors
from wsl.space.rule_base import dense, feature_in, out_val


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _param(b: SpecBuilder, path: str, op: str, v: Any, t: Any, what: str, ndim: int | None = None) -> str | None:
    """The state_dict name of a parameter operand read as it is (None for an absent optional one)."""
    if t is None:
        return None
    if not isinstance(v, Val) or v.param is None or b.param_shapes.get(v.param) != tuple(t.shape) \
            or (ndim is not None and t.dim() != ndim):
        raise UnsupportedLayerError(path, f"function '{op}'", f"its {what} is not a parameter read as it is "
                                    "(computed, reshaped or transposed weights are not supported here)")
    return v.param


def linear(b: SpecBuilder, path: str, x: Any, w: Any, bias: Any, tw: torch.Tensor, tb: Any, out: torch.Tensor,
           op: str = "linear", transposed: bool = False) -> Val:
    """``y = x W^T + b`` (``W`` of shape ``(out, in)``), or ``y = x W + b`` if ``transposed``."""
    wn = _param(b, path, op, w, tw, "weight", 2)
    bn = _param(b, path, op, bias, tb, "bias", 1)
    assert wn is not None
    n_in, n_out = (tw.shape[0], tw.shape[1]) if transposed else (tw.shape[1], tw.shape[0])
    where = _owner(wn)
    src, fac = feature_in(b, x, path, op, int(n_in), "last")
    g, site = dense(b, where, "linear", src, fac, int(n_out), wn, tuple(tw.shape), bn, transposed=transposed)
    return out_val(out, site, g, int(n_out))


def matmul_param(b: SpecBuilder, path: str, a: Any, c: Any, ta: torch.Tensor, tc: torch.Tensor, out: Any) -> Val:
    """``x @ W`` with a 2-D parameter ``W`` of shape ``(in, out)``."""
    if isinstance(a, Val) and (a.param or a.raw) and not (isinstance(c, Val) and c.param):
        raise UnsupportedLayerError(path, "function 'matmul'", "multiplies a parameter or input from the left")
    return linear(b, path, a, c, None, tc, None, out, op="matmul", transposed=True)


def embedding(b: SpecBuilder, path: str, w: Any, ids: Any, tw: torch.Tensor, out: torch.Tensor,
              dim: int = 0) -> Val:
    """Rows of table ``W`` (``(tokens, d)``) picked by integer ``ids``; with ``dim=1`` columns of a
    ``(d, tokens)`` table, the ``d`` units then coming first in the output."""
    wn = _param(b, path, "embedding", w, tw, "table", 2)
    assert wn is not None
    if not (isinstance(ids, Val) and ids.ids):
        raise UnsupportedLayerError(path, "function 'embedding'", "expects an integer index tensor")
    v, d = int(tw.shape[dim]), int(tw.shape[1 - dim])
    where = _owner(wn)
    tok = b.new_group(v, "token", where, fixed=True)
    src = b.new_site(tok, where + ":tokens", "tokens", 0)
    g, site = dense(b, where, "embedding", src, ((tok, v),), d, wn, tuple(tw.shape), None, transposed=dim == 0)
    return out_val(out, site, g, d, fdim=None if dim == 0 else 0)


def _attach_norm(b: SpecBuilder, where: str, site: int, fac: tuple, params: list[tuple[str, str]]) -> int:
    if any(slot in b.site_slots[site] for _, slot in params):
        old = site
        site = b.new_site(b.site_group(old), where, "hidden", b.depth(old))
        b.connect("residual", old, site, where)
    for name, slot in params:
        b.add_tensor(name, b.param_shapes[name], slot, where, "norm", ((tuple(fac),),))
        b.attach(site, slot, name, where, part=(0,))
    return site


def norm(b: SpecBuilder, path: str, op: str, x: Any, shape: Any, w: Any, bias: Any, tw: Any, tb: Any,
         out: torch.Tensor) -> Any:
    """``layer_norm``/``rms_norm`` over the last dim."""
    ns = tuple(int(n) for n in shape)
    wn = _param(b, path, op, w, tw, "weight")
    bn = _param(b, path, op, bias, tb, "bias")
    if len(ns) != 1:
        if wn is None and bn is None and isinstance(x, Val) and x.site is not None and x.fdim is not None \
                and x.fdim >= x.ndim - len(ns):
            return x.with_(shape=tuple(out.shape))
        raise UnsupportedLayerError(path, f"function '{op}'", f"normalized_shape={ns} spans more than the unit axis")
    src, fac = feature_in(b, x, path, op, ns[0], "last")
    params = [(n, slot) for n, slot in ((wn, "norm_scale"), (bn, "norm_shift")) if n is not None]
    if len(fac) != 1:  # positions x units flattened (Swin's patch merging): wsl.space.flat_norm
        fac = flat_norm_factors(fac, path, f"function '{op}'", "normalization")
        site = _attach_norm(b, _owner(wn or bn or path + ".x"), src, fac, params)
        return Val(shape=tuple(out.shape), site=site, fdim=len(out.shape) - 1, factors=fac)
    site = _attach_norm(b, _owner(wn or bn or path + ".x"), src, fac, params)
    return out_val(out, site, fac[0][0], ns[0])


def group_norm(b: SpecBuilder, path: str, x: Any, groups: int, w: Any, bias: Any, tw: Any, tb: Any,
               out: torch.Tensor) -> Val:
    wn = _param(b, path, "group_norm", w, tw, "weight")
    bn = _param(b, path, "group_norm", bias, tb, "bias")
    c = int(out.shape[1])
    src, fac = feature_in(b, x, path, "group_norm", c, "channel")
    if len(fac) != 1:
        raise UnsupportedLayerError(path, "function 'group_norm'", "normalizes a flattened unit axis")
    where = _owner(wn or bn or path + ".x")
    if 1 < int(groups) < c:
        b.nest(fac[0][0], b.new_group(int(groups), "norm_groups", where), where)
    params = [(n, slot) for n, slot in ((wn, "norm_scale"), (bn, "norm_shift")) if n is not None]
    site = _attach_norm(b, where, src, fac, params)
    return out_val(out, site, fac[0][0], c, fdim=1)


def _arg(args: tuple, i: int, default: Any = None) -> Any:
    return args[i] if len(args) > i else default


def handle(b: SpecBuilder, path: str, name: str, args: tuple, kwargs: dict, vargs: tuple, vkwargs: dict,
           out: Any) -> Any:
    """Dispatch one of :data:`NAMES` (arguments in ATen order; keywords as ``torch.nn.functional`` names them)."""
    def a(i: int, key: str) -> tuple[Any, Any]:
        return kwargs.get(key, _arg(args, i)), vkwargs.get(key, _arg(vargs, i))

    if name == "linear":
        (tw, w), (tb, bias) = a(1, "weight"), a(2, "bias")
        return linear(b, path, vargs[0], w, bias, tw, tb, out)
    if name == "addmm":
        return linear(b, path, vargs[1], vargs[2], vargs[0], args[2], args[0], out, op="addmm", transposed=True)
    if name == "embedding":
        if isinstance(vargs[0], Val) and vargs[0].ids:  # F.embedding(ids, weight)
            return embedding(b, path, vargs[1], vargs[0], args[1], out)
        return embedding(b, path, vargs[0], vargs[1], args[0], out)
    if name in ("layer_norm", "rms_norm"):
        (tw, w) = a(2, "weight")
        (tb, bias) = a(3, "bias") if name == "layer_norm" else (None, None)
        return norm(b, path, name, vargs[0], a(1, "normalized_shape")[0], w, bias, tw, tb, out)
    if name == "group_norm":
        (tw, w), (tb, bias) = a(2, "weight"), a(3, "bias")
        return group_norm(b, path, vargs[0], a(1, "num_groups")[0], w, bias, tw, tb, out)
    raise UnsupportedLayerError(path, f"function '{name}'", "wsl has no rule for this layer written as a function "
                                "of its parameters (use the torch.nn module)")


#: Operations read here (``wsl.space.ops`` routes them when a parameter is an operand).
NAMES = frozenset({"linear", "addmm", "embedding", "layer_norm", "rms_norm", "group_norm", "conv1d", "conv2d",
                   "conv3d", "convolution", "batch_norm", "instance_norm", "_weight_norm", "_weight_norm_interface"})

"""Token mixing: a Linear over an axis that carries no units (MLP-Mixer's token MLP).

In ``x`` of shape ``(B, C, T)`` with the channel units on dim 1, a
``Linear(T, H)`` mixes the token axis::

    h[b, c, k] = sum_t W1[k, t] x[b, c, t] + b1[k]          (k < H)
    y[b, c, t] = sum_k W2[t, k] act(h[b, c, k]) + b2[t]

Every channel row is mixed on its own, so a permutation of the channels
commutes with it. The tokens are fixed positions (a fixed group, the weight's
input axis); the ``H`` hidden units are a new permutable group: permuting them
by ``sigma`` as ``W1[sigma]``, ``b1[sigma]``, ``W2[:, sigma]`` leaves ``y``
unchanged. While ``h`` exists it carries two unit axes -- the channels on
``fdim`` and the hidden units on the last dim -- recorded as ``Val.side``;
only elementwise ops, transposes and a second Linear over that last dim
(which consumes the hidden units) may touch it, anything else is refused.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space import shape_ops
from wsl.space.builder import SpecBuilder, Val
from wsl.space.concat import ELEMENTWISE
from wsl.space.layer_params import weight_name
from wsl.space.rule_base import dense, kind_of

Handler = Callable[[SpecBuilder, str, nn.Module, list[Any], Any], Any]


def token_linear(b: SpecBuilder, path: str, mod: nn.Linear, x: Val, out: Any) -> Val:
    """A Linear over the last dim of ``x`` whose units are elsewhere (or whose last dim holds ``side``)."""
    n_in, n_out = mod.in_features, mod.out_features
    w = weight_name(path, mod)
    bias = f"{path}.bias" if mod.bias is not None else None
    if x.side is not None:  # the second Linear of the token MLP: hidden units -> fixed token positions
        _, g_h, s_h = x.side
        tok = b.new_group(n_out, "token", path + ":tokens", fixed=True)
        dense(b, path, "linear", s_h, ((g_h, n_in),), n_out, w, tuple(mod.weight.shape), bias, group=tok)
        return x.with_(shape=tuple(out.shape), side=None)
    tok = b.new_group(n_in, "token", path + ":tokens", fixed=True)
    src = b.new_site(tok, path + ":tokens", "tokens", 0)
    g, site = dense(b, path, "linear", src, ((tok, n_in),), n_out, w, tuple(mod.weight.shape), bias)
    return x.with_(shape=tuple(out.shape), side=(len(out.shape) - 1, g, site))


def accepting_tokens(h: Handler, mod: nn.Module, passes: bool) -> Handler:
    """``h``, extended to token mixing: a Linear over a non-unit last dim, and values with ``side``."""
    def run(b: SpecBuilder, path: str, m: nn.Module, xs: list[Any], out: Any) -> Any:
        x = b.resolve_raw(xs[0]) if xs and isinstance(xs[0], Val) else (xs[0] if xs else None)
        if any(isinstance(v, Val) and v.side is not None for v in xs[1:]):
            raise UnsupportedLayerError(path, kind_of(m), "a second input carries token-mixing hidden units")
        if isinstance(x, Val) and x.side is not None:
            if passes:
                return h(b, path, m, xs, out)
            if isinstance(m, nn.Linear) and x.side[0] == x.ndim - 1 and type(m) is nn.Linear:
                return token_linear(b, path, m, x, out)
            raise UnsupportedLayerError(path, kind_of(m), "reads a tensor that holds token-mixing hidden units "
                                        "(only activations and the token MLP's second Linear may)")
        if type(m) is nn.Linear and isinstance(x, Val) and x.site is not None and x.fdim is not None \
                and x.fdim != x.ndim - 1:
            return token_linear(b, path, m, x, out)
        return h(b, path, m, xs, out)

    return run


def _moved(path: str, name: str, x: Val, dim: int, args: tuple, kwargs: dict, out: Any) -> int:
    """Where dim ``dim`` of ``x`` goes under transpose/permute/getitem (by the single-axis rules)."""
    probe = Val(shape=x.shape, site=x.site, fdim=dim, factors=x.factors)
    if name == "getitem":
        v = shape_ops.getitem(path, probe, args[1], out)
    else:
        v = shape_ops.transpose(path, name, probe, args[1:], kwargs, out)
    return int(v.fdim)


def handle_side(path: str, name: str, args: tuple, kwargs: dict, vargs: tuple, vkwargs: dict, out: Any) -> Any:
    """Op rules for a value holding token-mixing hidden units (``Val.side``)."""
    x = vargs[0] if vargs else None
    if not isinstance(x, Val) or x.side is None or x.fdim is None:
        raise UnsupportedLayerError(path, f"function '{name}'", "combines token-mixing hidden units with another "
                                    "tensor")
    if not isinstance(out, torch.Tensor) or out.dim() != x.ndim:
        raise UnsupportedLayerError(path, f"function '{name}'", "changes the rank of a tensor holding token-mixing "
                                    "hidden units")
    dim, g, site = x.side
    if name in ELEMENTWISE or name in ("mul", "truediv", "div", "add", "sub"):
        for other in list(vargs[1:]) + list(vkwargs.values()):
            if isinstance(other, Val) and (other.has_units or other.raw or other.param or
                                           any(n != 1 for n in other.shape)):
                raise UnsupportedLayerError(path, f"function '{name}'", "combines token-mixing hidden units with "
                                            "a tensor that is not a scalar")
        return x.with_(shape=tuple(out.shape))
    if name in ("transpose", "permute", "movedim", "t", "getitem"):
        fdim = _moved(path, name, x, x.fdim, args, kwargs, out)
        side = (_moved(path, name, x, dim, args, kwargs, out), g, site)
        return x.with_(shape=tuple(out.shape), fdim=fdim, side=side)
    raise UnsupportedLayerError(path, f"function '{name}'", "wsl has no rule for this operation on token-mixing "
                                "hidden units")

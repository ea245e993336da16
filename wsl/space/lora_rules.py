"""Symmetry rule of LoRA layers (PEFT's ``lora.Linear``/``lora.Conv2d`` and anything shaped like them).

A LoRA layer wraps a base layer ``W`` (Linear, Conv, HF Conv1D) and adds, per
adapter ``a`` of rank ``r_a``, a low-rank update::

    y = W x + b + sum_a  s_a * B_a (A_a (dropout(x)))

with ``A_a`` of shape ``(r_a, in[, k...])`` (a Linear, or a conv with the base's
kernel) and ``B_a`` of shape ``(out, r_a[, 1...])``. Besides the base layer's
input and output groups, each adapter has a *rank group* of ``r_a`` units:
``B_a P^T P A_a = B_a A_a`` for any permutation ``P``, so permuting the rows of
``A_a`` and the columns of ``B_a`` together changes nothing. ``A_a``'s input
axis follows the base's input units, ``B_a``'s output axis its output units;
the base output and the update meet in an addition (a new site joined by
identity edges, as a residual connection).

The layer is recognised by structure, not by class: a module with a
``base_layer`` and ``lora_A``/``lora_B`` ``ModuleDict``s holding the same
adapter names. Every adapter present is claimed (active or not, merged or
not: permuting an inactive adapter with the base keeps it valid). DoRA
magnitudes and embedding adapters are refused by name. The layer is not from
``torch.nn``, so :func:`wsl.space.verify.check_layer` also runs it before and
after a random permutation of all of these groups.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space.builder import SpecBuilder, Val
from wsl.space.rule_base import dense, feature_in, kind_of, out_val

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_lora_layer(mod: nn.Module) -> bool:
    """A module shaped like PEFT's LoRA layers (``base_layer`` plus ``lora_A``/``lora_B`` ModuleDicts)."""
    m = mod._modules
    return isinstance(m.get("base_layer"), nn.Module) and isinstance(m.get("lora_A"), nn.ModuleDict) and \
        isinstance(m.get("lora_B"), nn.ModuleDict)


def _refuse_extras(path: str, mod: nn.Module) -> None:
    for name in ("lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B"):
        holder = getattr(mod, name, None)
        if holder is not None and len(holder):
            what = "DoRA magnitudes" if name == "lora_magnitude_vector" else "embedding adapters"
            raise UnsupportedLayerError(path, kind_of(mod), f"{what} ('{name}') are not supported")
    a, b = set(mod.lora_A.keys()), set(mod.lora_B.keys())
    if a != b:
        raise UnsupportedLayerError(path, kind_of(mod), f"adapters {sorted(a ^ b)} have lora_A or lora_B, not both")


def _in_features(base: nn.Module) -> tuple[int, str]:
    if isinstance(base, nn.Linear):
        return base.in_features, "last"
    if isinstance(base, _CONV):
        return base.in_channels, "channel"
    w = base._parameters.get("weight")
    if type(base).__name__ == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2:
        return int(w.shape[0]), "last"
    raise UnsupportedLayerError("", kind_of(base), "LoRA over this base layer is not supported")


def _kernel(m: nn.Module) -> tuple[tuple, tuple]:
    if not isinstance(m, _CONV):
        return (), ()
    ks = tuple(int(k) for k in m.kernel_size)
    attrs = (("kernel_size", ks), ("stride", tuple(m.stride)), ("dilation", tuple(m.dilation)))
    return tuple((((None, k),),) for k in ks), attrs


def _check_pair(path: str, name: str, base: nn.Module, a: nn.Module, bm: nn.Module) -> int:
    linear = isinstance(a, nn.Linear) and isinstance(bm, nn.Linear)
    conv = isinstance(base, _CONV) and type(a) is type(base) and type(bm) is type(base)
    if not (linear or conv) or (conv and (a.groups != 1 or bm.groups != 1 or any(k != 1 for k in bm.kernel_size))):
        raise UnsupportedLayerError(f"{path}.lora_A.{name}", kind_of(a), "LoRA factors must be two Linears, or a "
                                    "conv like the base and a 1x1 conv, without groups")
    r = a.out_features if linear else a.out_channels
    r_b = bm.in_features if linear else bm.in_channels
    if r != r_b:
        raise UnsupportedLayerError(path, kind_of(a), f"adapter '{name}': lora_A has rank {r}, lora_B {r_b}")
    return int(r)


def lora_handler(rule_for: Callable[[nn.Module], Any]) -> Callable[..., Val]:
    """The LoRA rule, reading the base layer with ``rule_for(base)`` (``wsl.space.handlers.handler_for``)."""
    def h_lora(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
        return _lora(b, path, mod, xs, out, rule_for(mod.base_layer))

    return h_lora


def _lora(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any, rule: Any) -> Val:
    _refuse_extras(path, mod)
    base = mod.base_layer
    if rule is None:
        raise UnsupportedLayerError(f"{path}.base_layer", kind_of(base), "wsl has no symmetry rule for this layer")
    n_in, dim = _in_features(base)
    o = rule(b, f"{path}.base_layer", base, xs, out)
    if not isinstance(o, Val) or o.site is None or len(o.factors) != 1:
        raise UnsupportedLayerError(path, kind_of(mod), "its base layer does not give one group of output units")
    g, n_out = o.factors[0]
    assert g is not None
    src, fac = feature_in(b, xs[0], path, mod, n_in, dim)
    sites = [o.site]
    for name in mod.lora_A.keys():
        a, bm = mod.lora_A[name], mod.lora_B[name]
        r = _check_pair(path, name, base, a, bm)
        ka, attrs_a = _kernel(a)
        kb, attrs_b = _kernel(bm)
        op = "conv" if ka else "linear"
        pa, pb = f"{path}.lora_A.{name}", f"{path}.lora_B.{name}"
        rank = b.new_group(r, "rank", pa)
        _, s_r = dense(b, pa, op, src, fac, r, f"{pa}.weight", tuple(a.weight.shape),
                       f"{pa}.bias" if a.bias is not None else None, extra_axes=ka, attrs=attrs_a, group=rank)
        _, s_b = dense(b, pb, op, s_r, ((rank, r),), n_out, f"{pb}.weight", tuple(bm.weight.shape),
                       f"{pb}.bias" if bm.bias is not None else None, extra_axes=kb, attrs=attrs_b, group=g)
        sites.append(s_b)
    if len(sites) == 1:
        return o
    site = b.new_site(g, path, "add", max(b.depth(s) for s in sites))
    for s in sites:
        b.connect("residual", s, site, path)
    return out_val(out, site, g, n_out, fdim=o.fdim)

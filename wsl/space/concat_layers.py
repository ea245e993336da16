"""Layer rules for inputs concatenated along their units (see :mod:`wsl.space.concat`).

An input ``x = cat([x_1 .. x_m])`` whose part ``i`` carries group ``G_i``:

* ``Linear``/``Conv*d``/``ConvTranspose*d`` (``groups=1``): ``y = W x + b``;
  ``W``'s input axis gets one segment per part, ``W[:, pi_1 (+) .. (+) pi_m]``;
  the output units are a new group; one graph connection per part.
* depthwise ``Conv*d`` (``groups = channels``): per channel, so each part keeps
  its group; the weight's channel axis gets one segment per part.
* ``BatchNorm``/``InstanceNorm``/``LayerNorm``/``GroupNorm(1, C)`` and
  ``GroupNorm(G, C)`` whose blocks do not straddle two parts: statistics over
  all units (or over blocks inside a part) are unchanged by a block
  permutation; the per-unit parameters get one segment per part and become
  node features of each part's site.
* activations, dropout, pooling: unchanged.

Any other layer reading a concatenation is refused with its path and type.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space.builder import SpecBuilder, Val
from wsl.space.layer_params import claim_extras, weight_name
from wsl.space.rule_base import kind_of, out_val

Handler = Callable[[SpecBuilder, str, nn.Module, list[Any], Any], Any]
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def _parts(x: Val, path: str, mod: nn.Module, dim: int, size: int, flat_ok: bool = False) -> list[tuple[int, tuple]]:
    if x.fdim != dim:
        raise UnsupportedLayerError(path, kind_of(mod), f"reads dim {dim} but the concatenated units are on dim "
                                    f"{x.fdim}")
    n = sum(math.prod(f[1] for f in fac) for _, fac in x.parts)
    if n != size:
        raise UnsupportedLayerError(path, kind_of(mod), f"expects {size} features, the concatenation has {n}")
    if not flat_ok and any(len(fac) != 1 for _, fac in x.parts):
        raise UnsupportedLayerError(path, kind_of(mod), "reads a concatenation of flattened unit axes")
    return list(x.parts)


def _conv_attrs(mod: nn.Module) -> tuple[tuple, tuple]:
    ks = tuple(int(k) for k in mod.kernel_size)
    pad = mod.padding if isinstance(mod.padding, str) else tuple(int(p) for p in mod.padding)
    attrs = (("kernel_size", ks), ("stride", tuple(mod.stride)), ("padding", pad), ("dilation", tuple(mod.dilation)))
    return attrs, tuple((((None, k),),) for k in ks)


def dense_parts(b: SpecBuilder, path: str, mod: nn.Module, x: Val, out: Any) -> Val:
    """Linear, conv (groups=1) or transposed conv reading a concatenation."""
    transposed = isinstance(mod, _CONV_T)
    if isinstance(mod, nn.Linear):
        n_in, n_out, dim, op, attrs, kernel = mod.in_features, mod.out_features, x.ndim - 1, "linear", (), ()
    else:
        n_in, n_out, dim, op = mod.in_channels, mod.out_channels, 1, "conv"
        attrs, kernel = _conv_attrs(mod)
        if transposed:
            attrs += (("transposed", True),)
    parts = _parts(x, path, mod, dim, n_in, flat_ok=op == "linear")
    segs = tuple(tuple(f) for _, f in parts)
    g = b.new_group(n_out, "hidden", path)
    site = b.new_site(g, path, "neurons", max(b.depth(s) for s, _ in parts) + 1)
    w = weight_name(path, mod)
    out_ax = (((g, n_out),),)
    axes = ((segs, out_ax) if transposed else (out_ax, segs)) + kernel
    b.add_tensor(w, tuple(mod.weight.shape), "weight", path, op, axes)
    for i, (s, _) in enumerate(parts):
        b.connect(op, s, site, path, tensor=w, part=((i, 0) if transposed else (0, i)) + (0,) * len(kernel),
                  src_axis=0 if transposed else 1, dst_axis=1 if transposed else 0, attrs=attrs)
    if mod.bias is not None:
        b.add_tensor(f"{path}.bias", (n_out,), "bias", path, op, (out_ax,))
        site = b.attach(site, "bias", f"{path}.bias", path, part=(0,))
    if not transposed:  # a weight-shaped extra is connected to the first part only; its other blocks go to extras
        site = claim_extras(b, path, mod, parts[0][0], w, axes, g, site, op, attrs)
    return out_val(out, site, g, n_out, fdim=dim)


def depthwise_parts(b: SpecBuilder, path: str, mod: nn.Module, x: Val, out: Any) -> Val:
    """A depthwise conv reading a concatenation: every part keeps its group."""
    parts = _parts(x, path, mod, 1, mod.in_channels)
    segs = tuple(tuple(f) for _, f in parts)
    attrs, kernel = _conv_attrs(mod)
    w = weight_name(path, mod)
    b.add_tensor(w, tuple(mod.weight.shape), "weight", path, "depthwise_conv", (segs, (((None, 1),),)) + kernel)
    bias = f"{path}.bias" if mod.bias is not None else None
    if bias is not None:
        b.add_tensor(bias, (mod.out_channels,), "bias", path, "depthwise_conv", (segs,))
    new = []
    for i, (s, fac) in enumerate(parts):
        site = b.new_site(b.site_group(s), path, "neurons", b.depth(s) + 1)
        b.connect("depthwise_conv", s, site, path, tensor=w, part=(i,) + (0,) * (mod.weight.dim() - 1),
                  src_axis=0, dst_axis=0, attrs=attrs)
        if bias is not None:
            site = b.attach(site, "bias", bias, path, part=(i,))
        new.append((site, fac))
    unclaimed = [n for n in mod.state_dict() if f"{path}.{n}" not in b.tensors]
    if unclaimed:
        raise UnsupportedLayerError(path, kind_of(mod), f"extra tensors {unclaimed} on a concatenated input")
    return Val(shape=tuple(out.shape), fdim=1, parts=tuple(new))


def norm_parts(b: SpecBuilder, path: str, mod: nn.Module, x: Val, out: Any) -> Val:
    """BatchNorm/InstanceNorm (channels), LayerNorm (last dim) or GroupNorm over a concatenation."""
    if isinstance(mod, nn.LayerNorm):
        if len(mod.normalized_shape) != 1:
            raise UnsupportedLayerError(path, kind_of(mod), "normalized_shape spans more than the unit axis")
        n, dim = int(mod.normalized_shape[0]), x.ndim - 1
    elif isinstance(mod, nn.GroupNorm):
        n, dim = mod.num_channels, 1
    else:
        n, dim = int(getattr(mod, "num_features")), 1
    parts = _parts(x, path, mod, dim, n)
    if isinstance(mod, nn.GroupNorm) and 1 < mod.num_groups < n:
        per = n // mod.num_groups
        for s, fac in parts:
            if fac[0][1] % per:
                raise UnsupportedLayerError(path, kind_of(mod), f"its groups of {per} channels straddle two "
                                            "concatenated parts")
            blocks = b.new_group(fac[0][1] // per, "norm_groups", path)
            b.nest(fac[0][0], blocks, path)
    return Val(shape=tuple(out.shape), fdim=dim, parts=tuple(attach_norm(b, path, mod, parts)))


def attach_norm(b: SpecBuilder, path: str, mod: nn.Module, parts: list[tuple[int, tuple]]) -> list[tuple[int, tuple]]:
    """Record a norm layer's per-unit tensors (one segment per part) as node features; returns the new parts."""
    segs = tuple(tuple(f) for _, f in parts)
    own = dict(mod.named_parameters(recurse=False))
    own.update(dict(mod.named_buffers(recurse=False)))
    slots = [(short, slot) for short, slot in (("weight", "norm_scale"), ("bias", "norm_shift"),
                                                ("running_mean", "running_mean"), ("running_var", "running_var"))
             if own.get(short) is not None]
    for short, slot in slots:
        b.add_tensor(f"{path}.{short}", tuple(own[short].shape), slot, path, "norm", (segs,),
                     buffer=short.startswith("running"))
    new = []
    for i, (site, fac) in enumerate(parts):
        if any(slot in b.site_slots[site] for _, slot in slots):
            old = site
            site = b.new_site(b.site_group(old), path, "hidden", b.depth(old))
            b.connect("residual", old, site, path)
        for short, slot in slots:
            b.attach(site, slot, f"{path}.{short}", path, part=(i,))
        new.append((site, fac))
    if own.get("num_batches_tracked") is not None:
        b.extras.append(f"{path}.num_batches_tracked")
    return new


def _rule(mod: nn.Module) -> Callable[..., Val] | None:
    if isinstance(mod, nn.Linear) or (isinstance(mod, _CONV) and mod.groups == 1) or \
            (isinstance(mod, _CONV_T) and mod.groups == 1):
        return dense_parts
    if isinstance(mod, _CONV) and mod.groups == mod.in_channels == mod.out_channels:
        return depthwise_parts
    if isinstance(mod, _NORM + (nn.LayerNorm, nn.GroupNorm)):
        return norm_parts
    return None


def accepting_parts(h: Handler, mod: nn.Module, passes: bool, pools: bool) -> Handler:
    """``h``, extended to inputs concatenated along their units (or refusing them by name)."""
    def run(b: SpecBuilder, path: str, m: nn.Module, xs: list[Any], out: Any) -> Any:
        x = xs[0] if xs else None
        if not (isinstance(x, Val) and x.parts):
            if any(isinstance(v, Val) and v.parts for v in xs[1:]):
                raise UnsupportedLayerError(path, kind_of(m), "a second input is a concatenation of unit groups")
            return h(b, path, m, xs, out)
        if pools and x.fdim != 1:
            raise UnsupportedLayerError(path, kind_of(m), f"pools over dim 1 but the units are on dim {x.fdim}")
        if passes or pools:
            return h(b, path, m, xs, out)
        rule = _rule(m)
        if rule is None:
            raise UnsupportedLayerError(path, kind_of(m), "its input is a concatenation of unit groups, which "
                                        "wsl's rule for this layer does not support")
        return rule(b, path, m, x, out)

    return run

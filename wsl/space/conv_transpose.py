"""Symmetry rule of transposed convolutions (``ConvTranspose*d``, the up-sampling of U-Nets).

``y = conv_transpose(x, W) + b`` with ``W`` of shape ``(C_in, C_out, k...)``:
every output channel ``o`` is ``sum_i W[i, o] * x[i]`` spread over the kernel
taps, so permuting the input channels by ``pi`` and the (new) output group by
``sigma`` gives ``W[pi][:, sigma]`` and ``b[sigma]`` -- a dense layer with its
weight stored input-first, like HF's ``Conv1D``. Only ``groups=1`` is
supported; tensors beyond ``weight``/``bias`` are left unclaimed (and so
refused by name unless no permutation can touch them).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space.builder import SpecBuilder, Val
from wsl.space.rule_base import dense, feature_in, kind_of, out_val

CONV_TRANSPOSE: tuple[type, ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def h_conv_transpose(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
    assert isinstance(mod, CONV_TRANSPOSE)
    if mod.groups != 1:
        raise UnsupportedLayerError(path, kind_of(mod), f"grouped transposed convolution (groups={mod.groups})")
    src, fac = feature_in(b, xs[0], path, mod, mod.in_channels, "channel")
    if len(fac) != 1:
        raise UnsupportedLayerError(path, kind_of(mod), "convolution over a flattened unit axis")
    ks = tuple(int(k) for k in mod.kernel_size)
    attrs = (("kernel_size", ks), ("stride", tuple(mod.stride)), ("padding", tuple(mod.padding)),
             ("dilation", tuple(mod.dilation)), ("transposed", True))
    g, site = dense(b, path, "conv", src, fac, mod.out_channels, f"{path}.weight", tuple(mod.weight.shape),
                    f"{path}.bias" if mod.bias is not None else None, transposed=True,
                    extra_axes=tuple((((None, k),),) for k in ks), attrs=attrs)
    return out_val(out, site, g, mod.out_channels, fdim=1)

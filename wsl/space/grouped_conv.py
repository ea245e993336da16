"""Symmetry rule of grouped convolutions (``groups = G``: ResNeXt, RegNet, depthwise with a multiplier).

A ``Conv*d(C_in, C_out, groups=G)`` computes ``G`` independent convolutions,
block ``b`` reading input channels ``b n_in .. (b+1) n_in - 1`` (``n_in =
C_in/G``) and writing output channels ``b n_out .. (b+1) n_out - 1``::

    y[o] = sum_{j < n_in} W[o, j] * x[b(o) n_in + j] + bias[o],      b(o) = o // n_out

Its symmetries are nested groups: a new *block* group ``B`` of size ``G``;
the input channel group and a new output channel group are both nested in
``B`` (:meth:`~wsl.space.builder.SpecBuilder.nest`). A permutation moves whole
blocks by ``pi_B`` -- input and output blocks together -- and permutes the
units inside each block independently, input and output units each by their
own group. The weight's axis 1 is a *diagonal* axis (``(g_in, n_in)``,
relative to axis 0; :mod:`wsl.space.diagonal` has the index arithmetic).

The depthwise conv (``G = C_in = C_out``) is the case of blocks of one unit:
the output channels *are* the input channels and the weight connects them one
to one; :func:`wsl.space.handlers.h_conv` keeps its one-to-one form. A depthwise
conv with a channel multiplier (``G = C_in``, ``C_out = m C_in``) takes this
rule: the input group is tied to ``B`` and the ``m`` outputs of each input
channel permute among themselves.
"""

from __future__ import annotations

from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space.builder import SpecBuilder, Val
from wsl.space.layer_params import claim_extras, weight_name
from wsl.space.rule_base import kind_of, out_val


def h_grouped_conv(b: SpecBuilder, path: str, mod: nn.Module, src: int, fac: tuple, attrs: tuple,
                   kernel_axes: tuple, out: object) -> Val:
    """Record a grouped conv whose input units are ``fac`` (one factor) at site ``src``."""
    assert isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    n_blocks, c_in, c_out = int(mod.groups), int(mod.in_channels), int(mod.out_channels)
    if c_in % n_blocks or c_out % n_blocks:  # torch refuses these too; kept for subclasses
        raise UnsupportedLayerError(path, kind_of(mod), f"{c_in} -> {c_out} channels do not split into "
                                    f"{n_blocks} groups")
    n_in = c_in // n_blocks
    g_in = fac[0][0]
    blocks = b.new_group(n_blocks, "conv_groups", path + ":groups")
    try:
        b.nest(g_in, blocks, path)
    except UnsupportedLayerError as e:  # e.g. GroupNorm blocks of 2 channels before conv blocks of 3
        raise UnsupportedLayerError(path, kind_of(mod), f"grouped convolution (groups={n_blocks}): its blocks of "
                                    f"{n_in} input channels conflict with other blocks of those channels "
                                    f"({e.args[0].split(': ', 1)[-1]})") from e
    g_out = b.new_group(c_out, "hidden", path)
    b.nest(g_out, blocks, path)
    site = b.new_site(g_out, path, "neurons", b.depth(src) + 1)
    w = weight_name(path, mod)
    axes = ((((g_out, c_out),),), (((g_in, n_in),),)) + tuple(kernel_axes)
    diagonal = ((1, 0, n_blocks),)
    b.add_tensor(w, tuple(mod.weight.shape), "weight", path, "grouped_conv", axes, diagonal=diagonal)
    attrs = tuple(attrs) + (("groups", n_blocks),)
    b.connect("conv", src, site, path, tensor=w, part=(0,) * mod.weight.dim(), src_axis=1, dst_axis=0,
              attrs=attrs)
    if mod.bias is not None:
        bias = f"{path}.bias"
        b.add_tensor(bias, (c_out,), "bias", path, "grouped_conv", ((((g_out, c_out),),),))
        site = b.attach(site, "bias", bias, path, part=(0,))
    site = claim_extras(b, path, mod, src, w, axes, g_out, site, "grouped_conv", attrs)
    return out_val(out, site, g_out, c_out, fdim=1)

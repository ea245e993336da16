"""Symmetry rules for layers that own parameters (leaf modules of the trace).

Each handler receives the :class:`~wsl.space.builder.Val` of the layer's
input(s), records the layer's tensors with their per-axis groups, adds sites
and connections for the parameter graph, and returns the output's ``Val``.

What is permutable, by layer
----------------------------
* ``Linear``/``Conv*d`` (``groups=1``): the output units form a new group;
  the input axis reuses the input's group (and flatten factors).
* Depthwise ``Conv*d`` (``groups == in == out``): output channels *are* the
  input channels (same group); edges are one-to-one. Other grouped convs
  (``groups = G``): nested groups, see :mod:`wsl.space.grouped_conv`.
* ``BatchNorm``/``InstanceNorm``/``LayerNorm`` (over the feature dim):
  per-unit statistics are permutation-equivariant; parameters become node
  features. ``GroupNorm(G, C)`` with ``1 < G < C`` nests the channels in ``G``
  blocks: channels permute only within a block, blocks permute as a whole.
* ``ConvTranspose*d`` (``groups=1``): a dense layer stored input-first.
* LoRA layers (PEFT's, recognised by structure): a rank group per adapter on
  top of the base layer's groups, see :mod:`wsl.space.lora_rules`.
* ``Embedding``: rows index tokens (a fixed group, the network input), columns
  a new group.
* Self-attention (``BertSelfAttention``/``ViTSelfAttention``,
  ``GPT2Attention``, ``nn.MultiheadAttention``): heads, q/k and v groups, see
  :mod:`wsl.space.attention_rules`.
* Weight normalization and subclasses of ``Linear``/``Conv*d`` with extra
  tensors (a per-output gain): see :mod:`wsl.space.layer_params`. Any layer
  not defined in ``torch.nn`` (or carrying hooks) is checked by running it
  before and after a random permutation (:mod:`wsl.space.verify`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space.builder import SpecBuilder, Val
from wsl.space.attention_rules import h_gpt2_attention, h_multihead_attention, h_self_attention_qkv
from wsl.space.channels_last import layernorm_off_last
from wsl.space.concat_layers import accepting_parts
from wsl.space.conv_transpose import CONV_TRANSPOSE, h_conv_transpose
from wsl.space.flat_norm import flat_norm_factors
from wsl.space.grouped_conv import h_grouped_conv
from wsl.space.token_mixing import accepting_tokens
from wsl.space.layer_params import claim_extras, weight_name
from wsl.space.lora_rules import is_lora_layer, lora_handler
from wsl.space.rule_base import dense, feature_in, kind_of, out_val

Handler = Callable[[SpecBuilder, str, nn.Module, list[Any], Any], Any]

PASSTHROUGH_MODULES: tuple[type, ...] = (
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
    nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Tanhshrink,
    nn.Softmax, nn.LogSoftmax,
)
POOL_MODULES: tuple[type, ...] = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
)
ATTENTION_QKV_CLASSES = ("BertSelfAttention", "ViTSelfAttention", "RobertaSelfAttention", "DeiTSelfAttention")


def h_linear(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
    assert isinstance(mod, nn.Linear)
    src, fac = feature_in(b, xs[0], path, mod, mod.in_features, "last")
    w = weight_name(path, mod)
    g, site = dense(b, path, "linear", src, fac, mod.out_features, w, tuple(mod.weight.shape),
                    f"{path}.bias" if mod.bias is not None else None)
    site = claim_extras(b, path, mod, src, w, b.tensors[w].axes, g, site, "linear")
    return out_val(out, site, g, mod.out_features)


def h_gpt_conv1d(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
    """HuggingFace ``Conv1D``: ``y = x @ W + b`` with ``W`` of shape ``(in, out)``."""
    w = mod.weight
    n_in, n_out = int(w.shape[0]), int(w.shape[1])
    src, fac = feature_in(b, xs[0], path, mod, n_in, "last")
    has_b = getattr(mod, "bias", None) is not None
    g, site = dense(b, path, "linear", src, fac, n_out, f"{path}.weight", (n_in, n_out),
                    f"{path}.bias" if has_b else None, transposed=True)
    return out_val(out, site, g, n_out)


def h_conv(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
    assert isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    src, fac = feature_in(b, xs[0], path, mod, mod.in_channels, "channel")
    if len(fac) != 1:
        raise UnsupportedLayerError(path, kind_of(mod), "convolution over a flattened unit axis")
    ks = tuple(int(k) for k in mod.kernel_size)
    attrs = (("kernel_size", ks), ("stride", tuple(mod.stride)), ("padding", _pad(mod.padding)),
             ("dilation", tuple(mod.dilation)))
    kernel_axes = tuple((((None, k),),) for k in ks)
    bias = f"{path}.bias" if mod.bias is not None else None
    w = weight_name(path, mod)
    if mod.groups == 1:
        g, site = dense(b, path, "conv", src, fac, mod.out_channels, w, tuple(mod.weight.shape),
                        bias, extra_axes=kernel_axes, attrs=attrs)
        site = claim_extras(b, path, mod, src, w, b.tensors[w].axes, g, site, "conv", attrs)
        return out_val(out, site, g, mod.out_channels, fdim=1)
    if mod.groups == mod.in_channels == mod.out_channels:
        g = fac[0][0]
        site = b.new_site(g, path, "neurons", b.depth(src) + 1)
        b.add_tensor(w, tuple(mod.weight.shape), "weight", path, "depthwise_conv",
                     (((fac[0],),), (((None, 1),),)) + kernel_axes)
        b.connect("depthwise_conv", src, site, path, tensor=w, part=(0,) * mod.weight.dim(),
                  src_axis=0, dst_axis=0, attrs=attrs)
        if bias is not None:
            b.add_tensor(bias, (mod.out_channels,), "bias", path, "depthwise_conv", (((fac[0],),),))
            site = b.attach(site, "bias", bias, path, part=(0,))
        site = claim_extras(b, path, mod, src, w, b.tensors[w].axes, g, site, "depthwise_conv", attrs)
        return out_val(out, site, g, mod.out_channels, fdim=1)
    return h_grouped_conv(b, path, mod, src, fac, attrs, kernel_axes, out)


def _pad(p: Any) -> Any:
    return p if isinstance(p, str) else tuple(int(v) for v in p)


def _norm_params(b: SpecBuilder, path: str, mod: nn.Module, op: str, site: int, fac: tuple) -> int:
    pairs = [("weight", "norm_scale"), ("bias", "norm_shift"), ("running_mean", "running_mean"),
             ("running_var", "running_var")]
    sd_names = dict(mod.named_parameters(recurse=False))
    sd_names.update(dict(mod.named_buffers(recurse=False)))
    present = [(f"{path}.{n}", slot) for n, slot in pairs if sd_names.get(n) is not None]
    if any(slot in b.site_slots[site] for _, slot in present):
        old = site
        site = b.new_site(b.site_group(old), path, "hidden", b.depth(old))
        b.connect("residual", old, site, path)
    for name, slot in present:
        short = name.rsplit(".", 1)[1]
        b.add_tensor(name, tuple(sd_names[short].shape), slot, path, op, ((tuple(fac),),),
                     buffer=short.startswith("running"))
        b.attach(site, slot, name, path, part=(0,))
    if getattr(mod, "num_batches_tracked", None) is not None:
        b.extras.append(f"{path}.num_batches_tracked")
    return site


def h_batchnorm(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
    x = xs[0]
    n = int(getattr(mod, "num_features"))
    src, fac = feature_in(b, x, path, mod, n, "channel")
    if len(fac) != 1:
        raise UnsupportedLayerError(path, kind_of(mod), "normalization over a flattened unit axis")
    site = _norm_params(b, path, mod, "norm", src, fac)
    return out_val(out, site, fac[0][0], n, fdim=1)


def h_layernorm(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
    """``LayerNorm`` and ``RMSNorm`` (no bias, no centring: the same rule)."""
    assert isinstance(mod, (nn.LayerNorm, nn.RMSNorm))
    x = xs[0]
    off_last = layernorm_off_last(b, path, mod, b.resolve_raw(x) if isinstance(x, Val) else x, out)
    if off_last is not None:  # over tokens, or a channels-first LayerNorm2d (wsl.space.channels_last)
        return off_last
    ns = tuple(mod.normalized_shape)
    has_params = mod.weight is not None or getattr(mod, "bias", None) is not None
    if len(ns) != 1:
        if not has_params and isinstance(x, Val) and x.site is not None and x.fdim is not None \
                and x.fdim >= x.ndim - len(ns):
            return x.with_(shape=tuple(out.shape))
        raise UnsupportedLayerError(path, kind_of(mod), f"normalized_shape={ns} spans more than the unit axis; "
                                    "use GroupNorm(1, C) for a layer norm over conv channels")
    src, fac = feature_in(b, x, path, mod, ns[0], "last")
    if len(fac) != 1:  # positions x units flattened (Swin's patch merging): wsl.space.flat_norm
        fac = flat_norm_factors(fac, path, kind_of(mod), "layer norm")
        return Val(shape=tuple(out.shape), site=_norm_params(b, path, mod, "norm", src, fac),
                   fdim=len(out.shape) - 1, factors=fac)
    site = _norm_params(b, path, mod, "norm", src, fac)
    return out_val(out, site, fac[0][0], ns[0])


def h_groupnorm(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
    assert isinstance(mod, nn.GroupNorm)
    src, fac = feature_in(b, xs[0], path, mod, mod.num_channels, "channel")
    if len(fac) != 1:
        raise UnsupportedLayerError(path, kind_of(mod), "normalization over a flattened unit axis")
    if 1 < mod.num_groups < mod.num_channels:
        blocks = b.new_group(mod.num_groups, "norm_groups", path)
        b.nest(fac[0][0], blocks, path)
    site = _norm_params(b, path, mod, "norm", src, fac)
    return out_val(out, site, fac[0][0], mod.num_channels, fdim=1)


def h_embedding(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
    assert isinstance(mod, nn.Embedding)
    x = xs[0]
    if not (isinstance(x, Val) and x.ids):
        raise UnsupportedLayerError(path, kind_of(mod), "expects an integer index tensor as input")
    v, d = mod.num_embeddings, mod.embedding_dim
    tok = b.new_group(v, "token", path, fixed=True)
    src = b.new_site(tok, path + ":tokens", "tokens", 0)
    g, site = dense(b, path, "embedding", src, ((tok, v),), d, f"{path}.weight", (v, d), None, transposed=True)
    return out_val(out, site, g, d)


_STRUCTURAL = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)


def h_passthrough(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Any:
    if not isinstance(mod, _STRUCTURAL):
        b.activations.add(type(mod).__name__.lower())
    x = xs[0]
    if isinstance(mod, (nn.Softmax, nn.LogSoftmax)) or not isinstance(x, Val):
        return x.with_(shape=tuple(out.shape)) if isinstance(x, Val) else None
    return x.with_(shape=tuple(out.shape))


def h_pool(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Any:
    x = xs[0]
    if isinstance(x, Val) and x.site is not None and x.fdim != 1:
        raise UnsupportedLayerError(path, kind_of(mod), f"pools over dim 1 but the units are on dim {x.fdim}")
    o = out[0] if isinstance(out, (tuple, list)) else out
    return x.with_(shape=tuple(o.shape)) if isinstance(x, Val) else None


def h_prelu(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Any:
    assert isinstance(mod, nn.PReLU)
    if mod.num_parameters != 1:
        raise UnsupportedLayerError(path, kind_of(mod), "per-channel PReLU slopes")
    b.extras.append(f"{path}.weight")
    return xs[0].with_(shape=tuple(out.shape))


def handler_for(mod: nn.Module) -> Handler | None:
    """The handler of a leaf module, or ``None`` if ``wsl`` has no rule for it.

    Every handler also takes inputs concatenated along their units
    (:mod:`wsl.space.concat_layers`) and token-mixing inputs
    (:mod:`wsl.space.token_mixing`), or refuses them by name.
    """
    h = _handler_for(mod)
    if h is None:
        return None
    passes = isinstance(mod, PASSTHROUGH_MODULES + (nn.PReLU,))
    return accepting_tokens(accepting_parts(h, mod, passes=passes, pools=isinstance(mod, POOL_MODULES)), mod, passes)


def _handler_for(mod: nn.Module) -> Handler | None:
    name = type(mod).__name__
    if is_lora_layer(mod):
        return lora_handler(handler_for)
    if name in ATTENTION_QKV_CLASSES:
        return h_self_attention_qkv
    if name == "GPT2Attention":
        return h_gpt2_attention
    w = mod._parameters.get("weight")  # not getattr: fx proxies parameter access while tracing
    if name == "Conv1D" and isinstance(w, torch.Tensor) and w.dim() == 2:
        return h_gpt_conv1d
    if isinstance(mod, nn.Linear):
        return h_linear
    if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return h_conv
    if isinstance(mod, CONV_TRANSPOSE):
        return h_conv_transpose
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d,
                        nn.InstanceNorm2d, nn.InstanceNorm3d)):
        return h_batchnorm
    if isinstance(mod, (nn.LayerNorm, nn.RMSNorm)):
        return h_layernorm
    if isinstance(mod, nn.GroupNorm):
        return h_groupnorm
    if isinstance(mod, nn.Embedding):
        return h_embedding
    if isinstance(mod, nn.MultiheadAttention):
        return h_multihead_attention
    if isinstance(mod, nn.PReLU):
        return h_prelu
    if isinstance(mod, POOL_MODULES):
        return h_pool
    if isinstance(mod, PASSTHROUGH_MODULES):
        return h_passthrough
    if isinstance(mod, nn.Flatten):
        return None  # traced through: its forward calls Tensor.flatten
    return None


def is_leaf(mod: nn.Module) -> bool:
    """Leaf modules: those with a handler, and any other built-in torch.nn layer
    (so that an unsupported built-in, e.g. ``nn.LSTM``, is reported by name)."""
    if handler_for(mod) is not None:
        return True
    if isinstance(mod, (nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Flatten, nn.Unflatten)):
        return False
    return type(mod).__module__.startswith("torch.nn")


def claimed_by_handler(mod: nn.Module) -> bool:
    return handler_for(mod) is not None


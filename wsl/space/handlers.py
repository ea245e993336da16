"""Symmetry rules for layers that own parameters (leaf modules of the trace).

Each handler receives the :class:`~wsl.space.builder.Val` of the layer's
input(s), records the layer's tensors with their per-axis groups, adds sites
and connections for the parameter graph, and returns the output's ``Val``.

What is permutable, by layer
----------------------------
* ``Linear``/``Conv*d`` (``groups=1``): the output units form a new group;
  the input axis reuses the input's group (and flatten factors).
* Depthwise ``Conv*d`` (``groups == in == out``): output channels *are* the
  input channels (same group); edges are one-to-one.
* ``BatchNorm``/``InstanceNorm``/``LayerNorm`` (over the feature dim):
  per-unit statistics are permutation-equivariant; parameters become node
  features. ``GroupNorm(G, C)`` with ``1 < G < C`` nests the channels in ``G``
  blocks: channels permute only within a block, blocks permute as a whole.
* ``Embedding``: rows index tokens (a fixed group, the network input), columns
  a new group.
* Self-attention (``BertSelfAttention``/``ViTSelfAttention``,
  ``GPT2Attention``, ``nn.MultiheadAttention``): with ``H`` heads of size
  ``d``, heads form a group of size ``H``. Query and key units form one group
  nested in the heads (q·k sums over units within a head, so q and k must be
  permuted together inside each head, independently across heads); value
  units form a second group nested in the *same* heads, whose inner
  permutation is independent of q/k's and is undone by the output
  projection's input axis. Scaling, softmax and masking are untouched.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space.builder import SpecBuilder, Val

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


def _kind(mod: nn.Module) -> str:
    return type(mod).__name__


def feature_in(b: SpecBuilder, x: Val, path: str, mod: nn.Module, size: int, dim: str) -> tuple[int, tuple]:
    """Site and factors of the units a layer reads along dim ``"last"`` or ``"channel"``."""
    if isinstance(x, (tuple, list)) or not isinstance(x, Val):
        raise UnsupportedLayerError(path, _kind(mod), "its input is not a single tensor")
    want = x.ndim - 1 if dim == "last" else 1
    x = b.resolve_raw(x)
    if x.raw is not None:
        if x.ndim < 2 or x.shape[want] != size:
            raise UnsupportedLayerError(path, _kind(mod), f"input of shape {x.shape} does not have {size} features on dim {want}")
        x = b.resolve_raw_at(x, want, path)
    if x.site is None:
        raise UnsupportedLayerError(path, _kind(mod), "its input carries no units (a constant or an integer tensor?)")
    if x.fdim != want:
        raise UnsupportedLayerError(
            path, _kind(mod), f"it mixes dim {want} of its input, but the units are on dim {x.fdim} "
            "(e.g. token-mixing over a sequence axis is not supported)")
    n = 1
    for f in x.factors:
        n *= f[1]
    if n != size:
        raise UnsupportedLayerError(path, _kind(mod), f"expects {size} input features, the input provides {n}")
    return x.site, x.factors


def _out_val(out: Any, site: int, group: int, size: int, fdim: int | None = None) -> Val:
    shape = tuple(out.shape)
    return Val(shape=shape, site=site, fdim=len(shape) - 1 if fdim is None else fdim, factors=((group, size),))


def dense(b: SpecBuilder, path: str, op: str, src: int, src_fac: tuple, n_out: int, w: str,
          w_shape: tuple[int, ...], bias: str | None, transposed: bool = False,
          extra_axes: tuple = (), attrs: tuple = (), group: int | None = None,
          site_kind: str = "neurons") -> tuple[int, int]:
    """Record a dense weight ``(out, in, *extra)`` (``(in, out)`` if transposed)."""
    g = b.new_group(n_out, "hidden", path) if group is None else group
    site = b.new_site(g, path, site_kind, b.depth(src) + 1)
    out_ax = (((g, n_out),),)
    in_ax = (tuple(src_fac),)
    axes = ((in_ax, out_ax) if transposed else (out_ax, in_ax)) + tuple(extra_axes)
    b.add_tensor(w, w_shape, "weight", path, op, axes)
    b.connect(op, src, site, path, tensor=w, part=(0,) * len(w_shape),
              src_axis=0 if transposed else 1, dst_axis=1 if transposed else 0, attrs=attrs)
    if bias is not None:
        b.add_tensor(bias, (n_out,), "bias", path, op, (out_ax,))
        site = b.attach(site, "bias", bias, path, part=(0,))
    return g, site


def h_linear(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
    assert isinstance(mod, nn.Linear)
    src, fac = feature_in(b, xs[0], path, mod, mod.in_features, "last")
    g, site = dense(b, path, "linear", src, fac, mod.out_features, f"{path}.weight", tuple(mod.weight.shape),
                    f"{path}.bias" if mod.bias is not None else None)
    return _out_val(out, site, g, mod.out_features)


def h_gpt_conv1d(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
    """HuggingFace ``Conv1D``: ``y = x @ W + b`` with ``W`` of shape ``(in, out)``."""
    w = mod.weight
    n_in, n_out = int(w.shape[0]), int(w.shape[1])
    src, fac = feature_in(b, xs[0], path, mod, n_in, "last")
    has_b = getattr(mod, "bias", None) is not None
    g, site = dense(b, path, "linear", src, fac, n_out, f"{path}.weight", (n_in, n_out),
                    f"{path}.bias" if has_b else None, transposed=True)
    return _out_val(out, site, g, n_out)


def h_conv(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
    assert isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
    src, fac = feature_in(b, xs[0], path, mod, mod.in_channels, "channel")
    if len(fac) != 1:
        raise UnsupportedLayerError(path, _kind(mod), "convolution over a flattened unit axis")
    ks = tuple(int(k) for k in mod.kernel_size)
    attrs = (("kernel_size", ks), ("stride", tuple(mod.stride)), ("padding", _pad(mod.padding)),
             ("dilation", tuple(mod.dilation)))
    kernel_axes = tuple((((None, k),),) for k in ks)
    bias = f"{path}.bias" if mod.bias is not None else None
    if mod.groups == 1:
        g, site = dense(b, path, "conv", src, fac, mod.out_channels, f"{path}.weight", tuple(mod.weight.shape),
                        bias, extra_axes=kernel_axes, attrs=attrs)
        return _out_val(out, site, g, mod.out_channels, fdim=1)
    if mod.groups == mod.in_channels == mod.out_channels:
        g = fac[0][0]
        site = b.new_site(g, path, "neurons", b.depth(src) + 1)
        w = f"{path}.weight"
        b.add_tensor(w, tuple(mod.weight.shape), "weight", path, "depthwise_conv",
                     (((fac[0],),), (((None, 1),),)) + kernel_axes)
        b.connect("depthwise_conv", src, site, path, tensor=w, part=(0,) * mod.weight.dim(),
                  src_axis=0, dst_axis=0, attrs=attrs)
        if bias is not None:
            b.add_tensor(bias, (mod.out_channels,), "bias", path, "depthwise_conv", (((fac[0],),),))
            site = b.attach(site, "bias", bias, path, part=(0,))
        return _out_val(out, site, g, mod.out_channels, fdim=1)
    raise UnsupportedLayerError(path, _kind(mod), f"grouped convolution with groups={mod.groups} "
                                "(only groups=1 and depthwise groups=in=out are supported)")


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
        raise UnsupportedLayerError(path, _kind(mod), "normalization over a flattened unit axis")
    site = _norm_params(b, path, mod, "norm", src, fac)
    return _out_val(out, site, fac[0][0], n, fdim=1)


def h_layernorm(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
    assert isinstance(mod, nn.LayerNorm)
    x = xs[0]
    ns = tuple(mod.normalized_shape)
    has_params = mod.weight is not None or getattr(mod, "bias", None) is not None
    if len(ns) != 1:
        if not has_params and isinstance(x, Val) and x.site is not None and x.fdim is not None \
                and x.fdim >= x.ndim - len(ns):
            return x.with_(shape=tuple(out.shape))
        raise UnsupportedLayerError(path, _kind(mod), f"normalized_shape={ns} spans more than the unit axis; "
                                    "use GroupNorm(1, C) for a layer norm over conv channels")
    src, fac = feature_in(b, x, path, mod, ns[0], "last")
    if len(fac) != 1:
        raise UnsupportedLayerError(path, _kind(mod), "layer norm over a flattened unit axis")
    site = _norm_params(b, path, mod, "norm", src, fac)
    return _out_val(out, site, fac[0][0], ns[0])


def h_groupnorm(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
    assert isinstance(mod, nn.GroupNorm)
    src, fac = feature_in(b, xs[0], path, mod, mod.num_channels, "channel")
    if len(fac) != 1:
        raise UnsupportedLayerError(path, _kind(mod), "normalization over a flattened unit axis")
    if 1 < mod.num_groups < mod.num_channels:
        blocks = b.new_group(mod.num_groups, "norm_groups", path)
        b.nest(fac[0][0], blocks, path)
    site = _norm_params(b, path, mod, "norm", src, fac)
    return _out_val(out, site, fac[0][0], mod.num_channels, fdim=1)


def h_embedding(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
    assert isinstance(mod, nn.Embedding)
    x = xs[0]
    if not (isinstance(x, Val) and x.ids):
        raise UnsupportedLayerError(path, _kind(mod), "expects an integer index tensor as input")
    v, d = mod.num_embeddings, mod.embedding_dim
    tok = b.new_group(v, "token", path, fixed=True)
    src = b.new_site(tok, path + ":tokens", "tokens", 0)
    g, site = dense(b, path, "embedding", src, ((tok, v),), d, f"{path}.weight", (v, d), None, transposed=True)
    return _out_val(out, site, g, d)


def _attention_groups(b: SpecBuilder, path: str, heads: int, d: int) -> tuple[int, int]:
    h = b.new_group(heads, "head", path + ":heads")
    qk = b.new_group(heads * d, "qk", path + ":qk")
    v = b.new_group(heads * d, "v", path + ":v")
    b.nest(qk, h, path)
    b.nest(v, h, path)
    return qk, v


def _attention_links(b: SpecBuilder, path: str, q: int, k: int, v: int, heads: int) -> None:
    b.connect("attn_qk", q, k, path, attrs=(("heads", heads),))
    b.connect("attn_kv", k, v, path, attrs=(("heads", heads),))


def h_self_attention_qkv(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Val:
    """BERT/ViT-style self-attention with separate ``query``/``key``/``value`` Linears."""
    heads = int(getattr(mod, "num_attention_heads"))
    d = int(getattr(mod, "attention_head_size"))
    own = {n for n, _ in mod.named_parameters()} - {f"{p}.{s}" for p in ("query", "key", "value") for s in ("weight", "bias")}
    if own or getattr(mod, "position_embedding_type", "absolute") != "absolute":
        raise UnsupportedLayerError(path, _kind(mod), f"attention with extra parameters {sorted(own)} or relative positions")
    x = xs[0]
    hidden = mod.query.in_features
    src, fac = feature_in(b, x, path, mod, hidden, "last")
    qk, vg = _attention_groups(b, path, heads, d)
    sites = {}
    for name, g in (("query", qk), ("key", qk), ("value", vg)):
        lin = getattr(mod, name)
        _, sites[name] = dense(b, f"{path}.{name}", "linear", src, fac, heads * d, f"{path}.{name}.weight",
                               tuple(lin.weight.shape), f"{path}.{name}.bias" if lin.bias is not None else None,
                               group=g)
    _attention_links(b, path, sites["query"], sites["key"], sites["value"], heads)
    o = out[0] if isinstance(out, (tuple, list)) else out
    v = _out_val(o, sites["value"], vg, heads * d)
    return (v,) + (None,) * (len(out) - 1) if isinstance(out, (tuple, list)) else v


def _fused_qkv(b: SpecBuilder, path: str, w: str, bias: str | None, w_shape: tuple[int, ...], src: int,
               fac: tuple, e: int, heads: int, transposed: bool) -> tuple[int, int]:
    """A fused q/k/v projection: the output axis has three segments."""
    qk, vg = _attention_groups(b, path, heads, e // heads)
    out_axis = (((qk, e),), ((qk, e),), ((vg, e),))
    in_axis = (tuple(fac),)
    b.add_tensor(w, w_shape, "weight", path, "linear", (in_axis, out_axis) if transposed else (out_axis, in_axis))
    depth = b.depth(src) + 1
    sites = [b.new_site(g, f"{path}:{n}", "neurons", depth) for n, g in (("q", qk), ("k", qk), ("v", vg))]
    if bias is not None:
        b.add_tensor(bias, (3 * e,), "bias", path, "linear", (out_axis,))
    for i, site in enumerate(sites):
        part = (0, i) if transposed else (i, 0)
        b.connect("linear", src, site, path, tensor=w, part=part,
                  src_axis=0 if transposed else 1, dst_axis=1 if transposed else 0)
        if bias is not None:
            sites[i] = b.attach(site, "bias", bias, path, part=(i,))
    _attention_links(b, path, sites[0], sites[1], sites[2], heads)
    return vg, sites[2]


def h_gpt2_attention(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Any:
    """GPT-2 attention: fused ``c_attn`` (Conv1D, ``(D, 3D)``) and ``c_proj``."""
    heads = int(getattr(mod, "num_heads"))
    c_attn, c_proj = getattr(mod, "c_attn"), getattr(mod, "c_proj")
    e = int(c_attn.weight.shape[1]) // 3
    own = {n for n, _ in mod.named_parameters()} - {f"{m}.{s}" for m in ("c_attn", "c_proj") for s in ("weight", "bias")}
    if own or getattr(mod, "is_cross_attention", False):
        raise UnsupportedLayerError(path, _kind(mod), f"cross-attention or extra parameters {sorted(own)}")
    src, fac = feature_in(b, xs[0], path, mod, int(c_attn.weight.shape[0]), "last")
    vg, vsite = _fused_qkv(b, f"{path}.c_attn", f"{path}.c_attn.weight", f"{path}.c_attn.bias",
                           tuple(c_attn.weight.shape), src, fac, e, heads, transposed=True)
    n_out = int(c_proj.weight.shape[1])
    g, site = dense(b, f"{path}.c_proj", "linear", vsite, ((vg, e),), n_out, f"{path}.c_proj.weight",
                    tuple(c_proj.weight.shape), f"{path}.c_proj.bias", transposed=True)
    _claim_buffers(b, path, mod)
    o = out[0] if isinstance(out, (tuple, list)) else out
    v = _out_val(o, site, g, n_out)
    return (v,) + (None,) * (len(out) - 1) if isinstance(out, (tuple, list)) else v


def h_multihead_attention(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Any:
    assert isinstance(mod, nn.MultiheadAttention)
    if not mod._qkv_same_embed_dim or mod.bias_k is not None:
        raise UnsupportedLayerError(path, _kind(mod), "separate kdim/vdim or add_bias_kv")
    q, k, v = (xs + [None, None, None])[:3]
    if not (q is k is v):
        raise UnsupportedLayerError(path, _kind(mod), "only self-attention (query is key is value) is supported")
    e, heads = mod.embed_dim, mod.num_heads
    src, fac = feature_in(b, q, path, mod, e, "last")
    vg, vsite = _fused_qkv(b, path, f"{path}.in_proj_weight",
                           f"{path}.in_proj_bias" if mod.in_proj_bias is not None else None,
                           (3 * e, e), src, fac, e, heads, transposed=False)
    g, site = dense(b, f"{path}.out_proj", "linear", vsite, ((vg, e),), e, f"{path}.out_proj.weight",
                    (e, e), f"{path}.out_proj.bias" if mod.out_proj.bias is not None else None)
    return (_out_val(out[0], site, g, e), None)


def _claim_buffers(b: SpecBuilder, path: str, mod: nn.Module) -> None:
    for name, _ in mod.named_buffers():
        b.extras.append(f"{path}.{name}")


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
        raise UnsupportedLayerError(path, _kind(mod), f"pools over dim 1 but the units are on dim {x.fdim}")
    o = out[0] if isinstance(out, (tuple, list)) else out
    return x.with_(shape=tuple(o.shape)) if isinstance(x, Val) else None


def h_prelu(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Any:
    assert isinstance(mod, nn.PReLU)
    if mod.num_parameters != 1:
        raise UnsupportedLayerError(path, _kind(mod), "per-channel PReLU slopes")
    b.extras.append(f"{path}.weight")
    return xs[0].with_(shape=tuple(out.shape))


def handler_for(mod: nn.Module) -> Handler | None:
    """The handler of a leaf module, or ``None`` if ``wsl`` has no rule for it."""
    name = type(mod).__name__
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
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d,
                        nn.InstanceNorm2d, nn.InstanceNorm3d)):
        return h_batchnorm
    if isinstance(mod, nn.LayerNorm):
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


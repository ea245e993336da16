"""Symmetry rules for self-attention layers (leaf modules of the trace).

With ``H`` heads of size ``d``, heads form a group of size ``H``. Query and
key units form one group nested in the heads (q·k sums over units within a
head, so q and k are permuted together inside each head, independently across
heads); value units form a second group nested in the *same* heads, whose
inner permutation is independent of q/k's and is undone by the output
projection's input axis. Scaling, softmax and masking are untouched.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space.builder import SpecBuilder, Val
from wsl.space.rule_base import dense, feature_in, kind_of, out_val


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
        raise UnsupportedLayerError(path, kind_of(mod), f"attention with extra parameters {sorted(own)} or relative positions")
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
    v = out_val(o, sites["value"], vg, heads * d)
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
        raise UnsupportedLayerError(path, kind_of(mod), f"cross-attention or extra parameters {sorted(own)}")
    src, fac = feature_in(b, xs[0], path, mod, int(c_attn.weight.shape[0]), "last")
    vg, vsite = _fused_qkv(b, f"{path}.c_attn", f"{path}.c_attn.weight", f"{path}.c_attn.bias",
                           tuple(c_attn.weight.shape), src, fac, e, heads, transposed=True)
    n_out = int(c_proj.weight.shape[1])
    g, site = dense(b, f"{path}.c_proj", "linear", vsite, ((vg, e),), n_out, f"{path}.c_proj.weight",
                    tuple(c_proj.weight.shape), f"{path}.c_proj.bias", transposed=True)
    _claim_buffers(b, path, mod)
    o = out[0] if isinstance(out, (tuple, list)) else out
    v = out_val(o, site, g, n_out)
    return (v,) + (None,) * (len(out) - 1) if isinstance(out, (tuple, list)) else v


def h_multihead_attention(b: SpecBuilder, path: str, mod: nn.Module, xs: list[Any], out: Any) -> Any:
    assert isinstance(mod, nn.MultiheadAttention)
    if not mod._qkv_same_embed_dim or mod.bias_k is not None:
        raise UnsupportedLayerError(path, kind_of(mod), "separate kdim/vdim or add_bias_kv")
    q, k, v = (xs + [None, None, None])[:3]
    if not (q is k is v):
        raise UnsupportedLayerError(path, kind_of(mod), "only self-attention (query is key is value) is supported")
    e, heads = mod.embed_dim, mod.num_heads
    src, fac = feature_in(b, q, path, mod, e, "last")
    vg, vsite = _fused_qkv(b, path, f"{path}.in_proj_weight",
                           f"{path}.in_proj_bias" if mod.in_proj_bias is not None else None,
                           (3 * e, e), src, fac, e, heads, transposed=False)
    g, site = dense(b, f"{path}.out_proj", "linear", vsite, ((vg, e),), e, f"{path}.out_proj.weight",
                    (e, e), f"{path}.out_proj.bias" if mod.out_proj.bias is not None else None)
    return (out_val(out[0], site, g, e), None)


def _claim_buffers(b: SpecBuilder, path: str, mod: nn.Module) -> None:
    for name, _ in mod.named_buffers():
        b.extras.append(f"{path}.{name}")

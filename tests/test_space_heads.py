"""Transformer symmetries derived from operations, on small torch-only modules (no transformers needed).

Every case runs through both front ends (torch.fx and torch.export) and checks
the central property with randomised weights, norms and biases and two
random permutations (:func:`tests.space_checks.assert_preserves`), plus the
structure the rule should find; every symmetry also has a near miss that
must be refused, or a permutation outside the group that must change the
function (the property test can fail).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.space_checks import assert_preserves, output_changes, randomize
from wsl.errors import UnsupportedLayerError
from wsl.space import WeightSpace, random_permutation

FRONTENDS = ["fx", "export"]
D, H, T = 16, 4, 6


class RMSNorm(nn.Module):
    """``w * x / rms(x)``, or ``(1 + w) * ...`` (Gemma) with ``plus_one``."""

    def __init__(self, n: int, plus_one: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.plus_one = plus_one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)
        return y * (1 + self.weight) if self.plus_one else self.weight * y


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """Self-attention with separate q/k/v/o projections, heads made by ``view``.

    ``kv_heads < heads``: grouped-query attention (key/value heads repeated by expand + reshape);
    ``rope``: rotary embeddings on q and k (cos/sin tables, ``rotate_half``); ``sdpa``: fused kernel,
    else ``softmax(q k^T / sqrt(d)) v`` with matmuls.
    """

    def __init__(self, heads: int = H, kv_heads: int | None = None, rope: bool = False, sdpa: bool = True,
                 bias: bool = True) -> None:
        super().__init__()
        self.h, self.kv = heads, kv_heads or heads
        self.d = D // heads
        self.q = nn.Linear(D, heads * self.d, bias=bias)
        self.k = nn.Linear(D, self.kv * self.d, bias=bias)
        self.v = nn.Linear(D, self.kv * self.d, bias=bias)
        self.o = nn.Linear(heads * self.d, D, bias=bias)
        self.rope, self.sdpa = rope, sdpa
        pos = torch.arange(T, dtype=torch.float32)[:, None] / (100.0 ** (torch.arange(0, self.d, 2) / self.d))
        angles = torch.cat((pos, pos), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.d).transpose(1, 2)
        k = self.k(x).view(b, t, self.kv, self.d).transpose(1, 2)
        v = self.v(x).view(b, t, self.kv, self.d).transpose(1, 2)
        if self.rope:
            cos, sin = self.cos.to(x.dtype), self.sin.to(x.dtype)
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if self.kv != self.h:
            r = self.h // self.kv
            k = k[:, :, None].expand(b, self.kv, r, t, self.d).reshape(b, self.h, t, self.d)
            v = v[:, :, None].expand(b, self.kv, r, t, self.d).reshape(b, self.h, t, self.d)
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d), dim=-1) @ v
        return self.o(a.transpose(1, 2).reshape(b, t, self.h * self.d))


class GatedMLP(nn.Module):
    """``down(act(gate(x)) * up(x))`` (SwiGLU)."""

    def __init__(self, hidden: int = 24) -> None:
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(D, hidden, bias=False), nn.Linear(D, hidden), nn.Linear(hidden, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Decoder(nn.Module):
    """A pre-norm decoder block stack with a tied LM head (Llama-shaped when ``rope`` and ``kv_heads``)."""

    def __init__(self, vocab: int = 20, layers: int = 1, **attn: object) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, D)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"n1": RMSNorm(D), "attn": Attention(**attn), "n2": RMSNorm(D, plus_one=True),  # type: ignore[arg-type]
                           "mlp": GatedMLP()}) for _ in range(layers))
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids)
        for blk in self.blocks:
            h = h + blk["attn"](blk["n1"](h))
            h = h + blk["mlp"](blk["n2"](h))
        return self.head(self.norm(h))


def ids() -> torch.Tensor:
    return torch.randint(0, 20, (2, T), generator=torch.Generator().manual_seed(0))


def _axis(space: WeightSpace, name: str, axis: int = 0) -> tuple:
    return space.tensors[name].axes[axis]


# ------------------------------------------------------------------------------------------------ heads
@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "matmul"])
def test_heads_from_view_are_nested_groups(frontend: str, sdpa: bool) -> None:
    space = assert_preserves(Decoder(sdpa=sdpa), ids(), frontend)
    q, k, v = (_axis(space, f"blocks.0.attn.{p}.weight")[0][0][0] for p in "qkv")
    assert q == k != v
    heads = space.groups[q].parent
    assert heads is not None and heads == space.groups[v].parent and space.groups[heads].size == H
    assert space.groups[q].kind == "qk" and space.groups[v].kind == "v"
    assert _axis(space, "blocks.0.attn.o.weight", 1) == (((v, D),),)
    kinds = {c.kind for c in space.connections}
    assert {"attn_qk", "attn_kv"} <= kinds
    p = random_permutation(space, torch.Generator().manual_seed(3))
    d = D // H
    assert torch.equal(p[q].view(H, d) // d, p[heads][:, None].expand(H, d))  # whole heads move


def test_heads_permute_inside_but_q_and_k_must_agree() -> None:
    """The property test can fail: q units permuted inside heads without k changes the function."""
    m = randomize(Decoder().double())
    sd = dict(m.state_dict())
    d = D // H
    swap = torch.arange(D).view(H, d)
    swap[:, [0, 1]] = swap[:, [1, 0]]
    sd["blocks.0.attn.q.weight"] = sd["blocks.0.attn.q.weight"][swap.flatten()]
    sd["blocks.0.attn.q.bias"] = sd["blocks.0.attn.q.bias"][swap.flatten()]
    assert output_changes(m, ids(), sd) > 1e-6


class Scrambled(nn.Module):
    """Splits heads with a ``view`` that mixes tokens into the head dim (no transpose): not attention heads."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn
        b, t, _ = x.shape
        q, k, v = (lin(x).view(b, H, t, D // H) for lin in (a.q, a.k, a.v))
        return a.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, D))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_view_that_mixes_tokens_with_units_is_refused(frontend: str) -> None:
    m = nn.Sequential(nn.Linear(5, D), Scrambled(), nn.Linear(D, 3))
    with pytest.raises(UnsupportedLayerError) as err:
        WeightSpace.from_module(m, torch.randn(2, 8, 5), frontend=frontend)
    assert "'1" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------- fused qkv
class FusedQKV(nn.Module):
    """timm ViT attention: one ``qkv`` Linear, ``reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)``;
    ``split=True``: GPT-2's ``qkv.split(D, dim=-1)`` instead."""

    def __init__(self, split: bool = False, reuse: bool = False) -> None:
        super().__init__()
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.split, self.reuse = split, reuse

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x)
        if self.split:
            parts = qkv.split(D, dim=-1)  # (indexed: torch.fx cannot unpack a proxy)
            q, k, v = (parts[i].view(b, n, H, D // H).transpose(1, 2) for i in range(3))
        else:
            parts = qkv.reshape(b, n, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)
            q, k, v = parts[0], parts[1], parts[2]
        y = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, D))
        return y + qkv.mean(-1, keepdim=True) * qkv.sum() if self.reuse else y


def _vit(**kw: bool) -> nn.Module:
    return nn.Sequential(nn.Linear(5, D), nn.LayerNorm(D), FusedQKV(**kw), nn.GELU(), nn.Linear(D, 3))


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("split", [False, True], ids=["reshape_unbind", "split"])
def test_fused_qkv_splits_into_three(frontend: str, split: bool) -> None:
    space = assert_preserves(_vit(split=split), torch.randn(2, 7, 5), frontend)
    out_axis = _axis(space, "2.qkv.weight")
    assert len(out_axis) == 3  # three segments: q, k, v
    (q,), (k,), (v,) = ((seg[0][0],) for seg in out_axis)
    assert q == k != v and space.groups[q].parent == space.groups[v].parent is not None
    assert _axis(space, "2.qkv.bias") == out_axis


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_fused_output_used_whole_after_its_split_is_refused(frontend: str) -> None:
    with pytest.raises(UnsupportedLayerError, match="fused|whole|split"):
        WeightSpace.from_module(_vit(reuse=True), torch.randn(2, 7, 5), frontend=frontend)


# ------------------------------------------------------------------------------------ rotary, GQA
@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("kv_heads", [H, 2], ids=["mha", "gqa"])
def test_rotary_heads_move_but_units_inside_do_not(frontend: str, kv_heads: int) -> None:
    space = assert_preserves(Decoder(rope=True, kv_heads=kv_heads), ids(), frontend)
    d, r = D // H, H // kv_heads
    q, k = _axis(space, "blocks.0.attn.q.weight"), _axis(space, "blocks.0.attn.k.weight")
    heads = q[0][0][0]
    assert q == (((heads, kv_heads), (None, r * d)),)  # kv heads x (query heads of the group, head_dim): fixed
    assert k == (((heads, kv_heads), (None, d)),)
    v = _axis(space, "blocks.0.attn.v.weight")[0][0][0]
    assert space.groups[v].parent == heads and not space.groups[v].fixed and not space.groups[heads].fixed
    o_in = _axis(space, "blocks.0.attn.o.weight", 1)
    assert o_in == ((((v, D),),) if r == 1 else (((v, kv_heads, d), (None, r), (v, d, 1)),))


def test_rotary_forbids_permuting_units_inside_a_head() -> None:
    """Why the rule fixes them: the same swap in q and k inside one head changes a rotary model's output."""
    m = randomize(Decoder(rope=True).double())
    sd = dict(m.state_dict())
    d = D // H
    swap = torch.arange(D).view(H, d)
    swap[:, [0, 1]] = swap[:, [1, 0]]
    for p in ("q", "k"):
        for s in ("weight", "bias"):
            sd[f"blocks.0.attn.{p}.{s}"] = sd[f"blocks.0.attn.{p}.{s}"][swap.flatten()]
    assert output_changes(m, ids(), sd) > 1e-6
    plain = randomize(Decoder().double())  # without rotary the same swap is a symmetry
    sd = dict(plain.state_dict())
    for p in ("q", "k"):
        for s in ("weight", "bias"):
            sd[f"blocks.0.attn.{p}.{s}"] = sd[f"blocks.0.attn.{p}.{s}"][swap.flatten()]
    assert output_changes(plain, ids(), sd) < 1e-9


def test_kv_heads_must_move_with_their_query_heads() -> None:
    """Moving key/value heads without their query-head groups changes the function."""
    m = randomize(Decoder(rope=True, kv_heads=2).double())
    sd = dict(m.state_dict())
    d = D // H
    flip = torch.arange(2 * d).view(2, d).flip(0).flatten()  # swap the two kv heads in k and v only
    for p in ("k", "v"):
        for s in ("weight", "bias"):
            sd[f"blocks.0.attn.{p}.{s}"] = sd[f"blocks.0.attn.{p}.{s}"][flip]
    assert output_changes(m, ids(), sd) > 1e-6


class PerHeadTable(Attention):
    """A fixed table that varies across heads (not rotary): heads could not move."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.d).transpose(1, 2) * torch.arange(1.0, self.h + 1)[:, None, None]
        k = self.k(x).view(b, t, self.h, self.d).transpose(1, 2)
        v = self.v(x).view(b, t, self.h, self.d).transpose(1, 2)
        return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, D))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_table_varying_across_heads_is_refused(frontend: str) -> None:
    with pytest.raises(UnsupportedLayerError, match="varies along"):
        WeightSpace.from_module(nn.Sequential(nn.Linear(5, D), PerHeadTable()), torch.randn(2, T, 5),
                                frontend=frontend)


# grouped-query attention without rotary embeddings: tests/test_space_gqa.py


# ------------------------------------------------------------------------------ gated MLP, RMSNorm
@pytest.mark.parametrize("frontend", FRONTENDS)
def test_gate_and_up_share_the_hidden_group_and_rmsnorm_scales_the_units(frontend: str) -> None:
    m = nn.Sequential(nn.Linear(5, D), RMSNorm(D), GatedMLP(), RMSNorm(D, plus_one=True), nn.Linear(D, 3))
    space = assert_preserves(m, torch.randn(4, 5), frontend)
    assert _axis(space, "2.gate.weight") == _axis(space, "2.up.weight") == _axis(space, "2.down.weight", 1)
    assert space.tensors["1.weight"].axes == (_axis(space, "0.weight"),)
    assert space.tensors["3.weight"].axes == (_axis(space, "2.down.weight"),)


class FlippedGate(GatedMLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x).flip(-1))


class PartialRMS(nn.Module):
    """Normalizes by the RMS of the first half of the units only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x[..., : D // 2].pow(2).mean(-1, keepdim=True) + 1e-6)


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("layer", [FlippedGate, PartialRMS])
def test_gate_and_norm_near_misses_are_refused(frontend: str, layer: type) -> None:
    m = nn.Sequential(nn.Linear(5, D), nn.Tanh(), nn.Linear(D, D), layer(), nn.Linear(D, 3))
    with pytest.raises(UnsupportedLayerError) as err:
        WeightSpace.from_module(m, torch.randn(4, 5), frontend=frontend)
    assert "unsupported layer at '" in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------- tied weights
class TiedFunctional(nn.Module):
    """The LM head reads the embedding table through ``F.linear``: one tensor, two uses."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.mid = nn.Embedding(20, D), nn.Linear(D, D)

    def forward(self, i: torch.Tensor) -> torch.Tensor:
        return F.linear(torch.tanh(self.mid(self.emb(i))), self.emb.weight)


class CalledTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.f, self.o = nn.Linear(5, D), nn.Linear(D, D), nn.Linear(D, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.o(torch.relu(self.f(torch.tanh(self.f(self.a(x))))))


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("make,x", [(TiedFunctional, ids), (CalledTwice, lambda: torch.randn(4, 5)),
                                    (Decoder, ids)], ids=["functional", "called_twice", "tied_head"])
def test_a_tensor_used_twice_is_one_tensor(frontend: str, make: type, x: object) -> None:
    space = assert_preserves(make(), x(), frontend)  # type: ignore[operator]
    if make is Decoder:
        assert ("head.weight", "emb.weight") in space.meta("tied")
        assert space.tensors["head.weight"].axes[1] == space.tensors["emb.weight"].axes[1]
    nodes, edges = space.graph_size()
    assert edges > 0


class TransposedReuse(TiedFunctional):
    def forward(self, i: torch.Tensor) -> torch.Tensor:
        logits = F.linear(torch.tanh(self.mid(self.emb(i))), self.emb.weight)
        return F.linear(torch.tanh(logits), self.emb.weight.t())  # (vocab -> D) through the same table


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_tensor_used_transposed_is_refused(frontend: str) -> None:
    with pytest.raises(UnsupportedLayerError, match="linear.*TransposedReuse.*not a parameter read as it is"):
        WeightSpace.from_module(TransposedReuse(), ids(), frontend=frontend)


# ------------------------------------------------------------------------------------------------ meta
def test_tracing_on_the_meta_device_gives_the_same_spec() -> None:
    cpu = WeightSpace.from_module(Decoder(rope=True, kv_heads=2), ids(), frontend="export")
    with torch.device("meta"):
        meta_model = Decoder(rope=True, kv_heads=2)
    meta = WeightSpace.from_module(meta_model, ids().to("meta"), frontend="export")
    assert meta.signature == cpu.signature
    assert all(t.device.type == "meta" for t in meta_model.state_dict().values())


class MaskedAttention(Attention):
    """SDPA with a constant mask: ``per_head`` varies across heads (as ALiBi's slopes do), else a window mask
    expanded over the heads (as Swin's shifted windows build it)."""

    def __init__(self, per_head: bool) -> None:
        super().__init__()
        self.per_head = per_head
        self.register_buffer("slopes", torch.arange(1.0, H + 1)[:, None, None] * torch.ones(T, T), persistent=False)
        self.register_buffer("causal", torch.triu(torch.ones(T, T), 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (lin(x).view(b, t, self.h, self.d).transpose(1, 2) for lin in (self.q, self.k, self.v))
        if self.per_head:
            mask = self.slopes.to(x.dtype)
        else:
            mask = self.causal.to(x.dtype).view(1, 1, T, T).expand(b, H, T, T).reshape(b, H, T, T)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=-mask)
        return self.o(a.transpose(1, 2).reshape(b, t, D))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_constant_mask_may_not_tell_heads_apart(frontend: str) -> None:
    x = torch.randn(2, T, 5)
    with pytest.raises(UnsupportedLayerError, match="mask varies along dim 1"):
        WeightSpace.from_module(nn.Sequential(nn.Linear(5, D), MaskedAttention(True)), x, frontend=frontend)
    space = assert_preserves(nn.Sequential(nn.Linear(5, D), MaskedAttention(False)), x, frontend)
    assert any(g.kind == "head" and not g.fixed for g in space.groups)

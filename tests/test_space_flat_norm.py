"""Norms over a flattened (positions x channels) axis: Swin's patch merging, re-created in torch.nn (no timm).

Patch merging gathers the channels of 2x2 neighbouring tokens, ``reshape(B, H/2, 2, W/2, 2, C)``, permuted
and flattened into ``4C`` features, then ``norm(4C)`` and ``Linear(4C, 2C)``. A layer norm (or an RMS norm,
or an elementwise weight) over that axis is equivariant under any permutation of it, so the channel
permutation repeated in each of the four position blocks is exact, the norm's ``4C`` parameters moving
blockwise (:mod:`wsl.space.value_nodes` gives them graph nodes). Checked with randomised float64 weights and
two random permutations, with both front ends; the parameter graph round-trips exactly and is isomorphic
under the permutation. Wrong cases stay refused: a GroupNorm whose groups cut the position blocks (where
moving channels inside a block would change the function), and a norm over interleaved head pieces.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space import WeightSpace
from wsl.space.value_nodes import value_node_sets

from tests.graph_checks import assert_graph_equivariant
from tests.reach_checks import check_preserved, randomized
from tests.space_checks import assert_preserves


class HFRMSNorm(nn.Module):
    """RMSNorm written with tensor ops (the form Hugging Face models use)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


class FunctionalLayerNorm(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(n)), nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias)


class PatchMerging(nn.Module):
    def __init__(self, c: int, norm: type[nn.Module] | None) -> None:
        super().__init__()
        self.norm = norm(4 * c) if norm is not None else nn.GroupNorm(8, 4 * c)
        self.reduction = nn.Linear(4 * c, 2 * c, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        if isinstance(self.norm, nn.GroupNorm):
            return self.reduction(self.norm(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        return self.reduction(self.norm(x))


class MergeNet(nn.Module):
    def __init__(self, norm: type[nn.Module] | None, c: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(3, c)
        self.merge = PatchMerging(c, norm)
        self.head = nn.Linear(2 * c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.merge(self.embed(x)).mean((1, 2)))


X = torch.randn(2, 4, 4, 3, generator=torch.Generator().manual_seed(0))
NORMS = {"LayerNorm": nn.LayerNorm, "RMSNorm": nn.RMSNorm, "ops RMSNorm": HFRMSNorm,
         "F.layer_norm": FunctionalLayerNorm}


@pytest.mark.parametrize("norm", sorted(NORMS))
def test_norm_over_merged_patches_preserves_function_and_graph(norm: str) -> None:
    space = check_preserved(MergeNet(NORMS[norm]), X)  # fx; graph round trip, dense features
    assert_preserves(MergeNet(NORMS[norm]), X, "export")
    g = space.tensors["embed.weight"].axes[0][0][0][0]
    assert space.tensors["merge.norm.weight"].axes == ((((None, 4), (g, 4)),),)  # 4 positions x the channels
    assert space.tensors["merge.reduction.weight"].axes[1] == (((None, 4), (g, 4)),)
    [vs] = value_node_sets(space.spec)[0]
    assert (vs.units, vs.width) == (4, 4)
    assert space.graph_size()[0] == sum(space.groups[s.group].size for s in space.sites) + 16
    assert_graph_equivariant(space, randomized(MergeNet(NORMS[norm])).state_dict())


def test_a_position_block_permutation_would_change_the_function() -> None:
    """The blocks must stay in place: moving the norm's parameters across positions changes the output
    (so the check above can fail)."""
    m = randomized(MergeNet(nn.LayerNorm)).eval()
    sd = m.state_dict()
    moved = copy.deepcopy(m)
    w = sd["merge.norm.weight"].view(4, 4)
    moved.merge.norm.weight.data.copy_(w[[1, 0, 2, 3]].reshape(-1))
    with torch.no_grad():
        assert float((moved(X.double()) - m(X.double())).abs().max()) > 1e-6


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_group_norm_cutting_the_position_blocks_is_refused(frontend: str) -> None:
    """GroupNorm(8, 16) normalizes pairs of channels inside each position: a channel permutation moves
    channels between its groups and changes the function; it is refused, named."""
    m = randomized(MergeNet(None)).eval()
    x = torch.randn(1, 16, 2, 2, dtype=torch.float64)
    p = torch.tensor([1, 2, 3, 0]).repeat(4) + torch.arange(4).repeat_interleave(4) * 4
    with torch.no_grad():
        w, b = m.merge.norm.weight, m.merge.norm.bias
        moved = F.group_norm(x[:, p], 8, w[p], b[p])  # weights moved with the channels, still not equivariant
        assert float((moved - F.group_norm(x, 8, w, b)[:, p]).abs().max()) > 1e-6
        same = F.layer_norm(x[:, p].movedim(1, -1), (16,), w[p], b[p])  # a layer norm would be
        torch.testing.assert_close(same, F.layer_norm(x.movedim(1, -1), (16,), w, b)[..., p])
    with pytest.raises(UnsupportedLayerError, match="merge.norm.*GroupNorm.*flattened unit axis"):
        WeightSpace.from_module(MergeNet(None), X, frontend=frontend)


class HeadPieceNorm(nn.Module):
    """A layer norm over heads x head_dim flattened in the other order: two interleaved pieces of one group."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.norm, self.out = nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.q(x).view(b, t, 2, 4).transpose(-1, -2).reshape(b, t, 8)
        return self.out(self.norm(h))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_norm_over_interleaved_pieces_is_refused(frontend: str) -> None:
    with pytest.raises(UnsupportedLayerError, match=r"at 'norm' \(LayerNorm\).*reorders its parts"):
        WeightSpace.from_module(HeadPieceNorm(), torch.randn(2, 3, 6), frontend=frontend)


# ------------------------------------------------------------------ a Swin stage: window attention + merging
class WindowAttention(nn.Module):
    """Swin's attention inside one window: fused qkv split by ``reshape(B, N, 3, H, d)``, a relative-position
    bias table ``((2w-1)^2, H)`` gathered by position pairs and added per head."""

    def __init__(self, c: int, heads: int, w: int) -> None:
        super().__init__()
        self.h, self.qkv, self.proj = heads, nn.Linear(c, 3 * c), nn.Linear(c, c)
        self.table = nn.Parameter(torch.zeros((2 * w - 1) ** 2, heads))
        pos = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)
        rel = (pos[:, :, None] - pos[:, None, :]).permute(1, 2, 0) + (w - 1)
        self.register_buffer("index", rel[..., 0] * (2 * w - 1) + rel[..., 1], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.h, c // self.h).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.table[self.index.view(-1)].view(n, n, self.h).permute(2, 0, 1)
        attn = (q @ k.transpose(-2, -1) * (c // self.h) ** -0.5 + bias).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class SwinStage(nn.Module):
    def __init__(self, heads: int, c: int = 4) -> None:
        super().__init__()
        self.embed, self.norm1 = nn.Linear(3, c), nn.LayerNorm(c)
        self.attn, self.merge, self.head = WindowAttention(c, heads, 4), PatchMerging(c, nn.LayerNorm), nn.Linear(2 * c, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        b, hh, ww, c = h.shape
        t = h.reshape(b, hh * ww, c)
        t = t + self.attn(self.norm1(t))
        return self.head(self.merge(t.reshape(b, hh, ww, c)).mean((1, 2)))


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("heads", [1, 2])
def test_swin_stage_with_one_or_two_heads(frontend: str, heads: int) -> None:
    """With one head the merged attention output carries a one-unit heads factor: dropped, one index."""
    space = assert_preserves(SwinStage(heads), X, frontend)
    v = space.tensors["attn.qkv.weight"].axes[0][2][0][0]
    assert space.tensors["attn.proj.weight"].axes[1] == (((v, 4),),)
    assert_graph_equivariant(space, randomized(SwinStage(heads)).state_dict())

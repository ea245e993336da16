"""Grouped-query attention without rotary embeddings (torch-only modules from ``tests/test_space_heads.py``).

Each key/value head serves ``r`` query heads (``repeat_kv``: kv-major). Without rotary embeddings the units
inside a head are free, but a query head's units must move as those of its key head: the query units stand
for ``(k, K, d) x (None, r) x (k, d, 1)`` (pieces of the key group around the fixed repeat) and the query heads
for ``(kv, K) x (None, r)``. Checked with randomised float64 weights and two random permutations (both front
ends, fused and written-out attention); the parameter graph round-trips and is isomorphic under them. The
property test can fail: moving the units of one query head but not of the other head of its group changes
the function; another grouping of query heads (tiled) is refused, not guessed. Multi-query attention (one key
head, GPT-BigCode) is the case ``K = 1``: query units stand for ``(None, H) x (k, d)`` (query heads fixed).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.graph_checks import assert_graph_equivariant
from tests.space_checks import assert_preserves, output_changes, randomize
from tests.test_space_heads import D, FRONTENDS, H, Attention, Decoder, ids
from wsl.errors import UnsupportedLayerError
from wsl.space import WeightSpace

KV = 2
d, r = D // H, H // KV


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "matmul"])
@pytest.mark.parametrize("kv", [KV, 1], ids=["gqa", "mqa"])
def test_gqa_without_rotary_preserves_function_and_graph(frontend: str, sdpa: bool, kv: int) -> None:
    space = assert_preserves(Decoder(kv_heads=kv, sdpa=sdpa), ids(), frontend)
    a = "blocks.0.attn"
    (q,), (k,), (v,) = (space.tensors[f"{a}.{p}.weight"].axes[0] for p in "qkv")
    kg, vg, rep = k[0][0], v[0][0], H // kv
    assert not space.groups[kg].fixed and not space.groups[vg].fixed
    if kv > 1:  # query units: their key head's units, repeated for the query heads of its group
        assert q == ((kg, kv, d), (None, rep), (kg, d, 1))
        heads = space.groups[kg].parent
        assert heads is not None and space.groups[vg].parent == heads
        assert space.tensors[f"{a}.o.weight"].axes[1] == (((vg, kv, d), (None, rep), (vg, d, 1)),)
    else:  # multi-query: every query head's units move as the one key head's
        assert q == ((None, H), (kg, d)) and space.tensors[f"{a}.o.weight"].axes[1] == (((None, H), (vg, d)),)
    assert_graph_equivariant(space, randomize(Decoder(kv_heads=kv, sdpa=sdpa).double()).state_dict())


def test_query_heads_of_one_group_must_move_alike() -> None:
    """Permuting the units of kv head 0 in k, and in both of its query heads, is a symmetry; in only one of
    them it changes the function (so the query units cannot be a group of their own)."""
    m = randomize(Decoder(kv_heads=KV).double())
    sd = dict(m.state_dict())
    sigma = torch.tensor([2, 0, 3, 1])
    k_idx = torch.arange(KV * d)
    k_idx[:d] = sigma
    a = "blocks.0.attn"

    def moved(query_heads: list[int]) -> dict[str, torch.Tensor]:
        out = dict(sd)
        q_idx = torch.arange(H * d)
        for h in query_heads:
            q_idx[h * d:(h + 1) * d] = h * d + sigma
        for p, idx in (("q", q_idx), ("k", k_idx)):
            for s in ("weight", "bias"):
                out[f"{a}.{p}.{s}"] = sd[f"{a}.{p}.{s}"][idx]
        return out

    assert output_changes(m, ids(), moved(list(range(r)))) < 1e-9  # query heads 0..r-1 read kv head 0
    assert output_changes(m, ids(), moved([0])) > 1e-6


class TiledGQA(Attention):
    """Key/value heads repeated by tiling (query head h reads kv head h % K), not kv-major."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.d).transpose(1, 2)
        k = self.k(x).view(b, t, self.kv, self.d).transpose(1, 2)[:, None]
        v = self.v(x).view(b, t, self.kv, self.d).transpose(1, 2)[:, None]
        k = k.expand(b, r, self.kv, t, self.d).reshape(b, self.h, t, self.d)  # tiled: (repeat, kv heads)
        v = v.expand(b, r, self.kv, t, self.d).reshape(b, self.h, t, self.d)
        a = F.scaled_dot_product_attention(q, k, v) if self.sdpa else \
            torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
        return self.o(a.transpose(1, 2).reshape(b, t, self.h * self.d))


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "matmul"])
def test_another_grouping_of_query_heads_is_refused(frontend: str, sdpa: bool) -> None:
    m = torch.nn.Sequential(torch.nn.Linear(5, D), TiledGQA(kv_heads=KV, sdpa=sdpa))
    with pytest.raises(UnsupportedLayerError, match="not grouped by key heads kv-major|varies along them"):
        WeightSpace.from_module(m, torch.randn(2, 6, 5), frontend=frontend)

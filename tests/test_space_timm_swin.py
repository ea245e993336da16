"""timm Swin (patch merging, relative position bias, shifted windows) and the parameter graphs of Swin and LeViT.

Swin's patch merging normalizes ``4C`` merged channels (positions x channels, :mod:`wsl.space.flat_norm`);
its attention adds a relative-position bias table per head and, in every second block, rolls the tokens
and masks attention across window borders. LeViT normalizes its fused q/k/v projection with a BatchNorm
over heads x (q, k, v) units, which stay fixed inside a head. Both have node parameters with several values
per unit: the graph gives them value nodes (:mod:`wsl.space.value_nodes`). Checked with randomised float64
weights and two random permutations, both front ends; graph round trip exact and isomorphic.

Needs the optional ``timm`` package (skipped without it); timm is imported with the stub ``torchvision``
of ``tests/test_space_timm_attention.py``'s fixture when torchvision cannot be imported.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest
import torch

from tests.graph_checks import assert_graph_equivariant
from tests.space_checks import assert_preserves, randomize
from tests.test_space_timm_attention import timm  # noqa: F401 (the fixture)
from wsl.space.value_nodes import value_node_sets

pytestmark = pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                                reason="the optional 'timm' package is not installed")

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _swin(timm: Any) -> torch.nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    # 16x16 then 8x8 tokens in 4x4 windows: both stages have a shifted block; one head, then two
    return SwinTransformer(img_size=32, patch_size=2, window_size=4, embed_dim=8, depths=(2, 2), num_heads=(1, 2),
                           num_classes=3).eval()


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_timm_swin_preserves_function_and_graph(timm: Any, frontend: str) -> None:  # noqa: F811
    m = _swin(timm)
    assert m.layers[0].blocks[1].shift_size == (2, 2) and m.layers[1].blocks[1].shift_size == (2, 2)
    space = assert_preserves(m, X, frontend)
    norm = space.tensors["layers.1.downsample.norm.weight"].axes[0][0]
    assert [f[1] for f in norm] == [4, 8] and norm[0][0] is None and not space.groups[norm[1][0]].fixed
    table = space.tensors["layers.1.blocks.1.attn.relative_position_bias_table"].axes[1][0][0][0]
    assert space.groups[table].kind == "head" and space.groups[table].size == 2  # bias columns follow heads
    assert any(vs.width == 4 for vs in value_node_sets(space.spec)[0])
    assert_graph_equivariant(space, randomize(m.double()).state_dict())


def test_levit_graph_has_value_nodes_for_its_qkv_batchnorm(timm: Any,  # noqa: F811
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from timm.models.levit import Levit

    m = Levit(img_size=32, embed_dim=(16, 32), key_dim=8, depth=(1, 1), num_heads=(2, 2), num_classes=3,
              stem_stride=8).eval()
    for attn in {type(a) for a in m.modules() if hasattr(a, "attention_bias_cache")}:  # see test_space_timm_attention
        monkeypatch.setattr(attn, "get_attention_biases",
                            lambda self, device: self.attention_biases[:, self.attention_bias_idxs])
    space = assert_preserves(m, X, "fx", std=0.1)
    bn = space.tensors["stages.0.blocks.0.attn.qkv.bn.weight"].axes[0][0]
    assert space.groups[bn[0][0]].kind == "head" and bn[1] == (None, 32)  # 2 heads x (8 + 8 + 16) fixed units
    sets = value_node_sets(space.spec)[0]
    assert (2, 32) in {(vs.units, vs.width) for vs in sets}
    assert_graph_equivariant(space, randomize(m.double(), std=0.1).state_dict())

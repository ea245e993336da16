"""timm vision transformers (the attention part of issue 21): ViT, DeiT (distilled), LeViT.

timm's attention writes heads as ``qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4).unbind(0)`` (fused
q/k/v split by selection) and LeViT adds per-head bias tables indexed by position pairs. Both front ends
trace them; two random permutations of randomised models preserve the function.

Needs the optional ``timm`` package (skipped without it). timm imports ``torchvision`` at load time, which
does not import here: this file's fixture puts a stub ``torchvision`` into ``sys.modules`` while timm is
imported (only names timm reads at import time; no torchvision code runs in these tests) and removes it after.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from tests.space_checks import assert_preserves
from wsl.errors import UnsupportedLayerError
from wsl.space import WeightSpace

pytestmark = pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                                reason="the optional 'timm' package is not installed")

_STUBS = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional", "torchvision.ops",
          "torchvision.ops.misc", "torchvision.datasets", "torchvision.models",
          "torchvision.models.feature_extraction", "torchvision.io", "torchvision.utils"]


class _Name(type):
    """Any attribute of a stub name is another stub name (a class, so it can be subclassed or used as a key)."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Name(name, (), {})


class _Module(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Name(name, (), {})


@pytest.fixture(scope="module")
def timm() -> Iterator[Any]:
    """timm, imported with a stub torchvision (see the module docstring)."""
    saved = {n: sys.modules.get(n) for n in _STUBS}
    real = importlib.util.find_spec("torchvision") is not None
    if not real:
        for n in _STUBS:
            sys.modules[n] = _Module(n)
    try:
        import timm as module

        yield module
    finally:
        if not real:
            for n, m in saved.items():
                if m is None:
                    sys.modules.pop(n, None)
                else:
                    sys.modules[n] = m


VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)
CASES = {
    "vit_tiny_patch16_224": VIT,
    "deit_tiny_distilled_patch16_224": VIT,
    "vit_small_patch16_224": {**VIT, "class_token": False, "global_pool": "avg", "reg_tokens": 2},
}


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("arch", sorted(CASES))
def test_timm_vits_preserve_their_function(timm: Any, arch: str, frontend: str) -> None:
    m = timm.create_model(arch, pretrained=False, **CASES[arch]).eval()
    space = assert_preserves(m, torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), frontend)
    qkv = space.tensors["blocks.0.attn.qkv.weight"].axes[0]
    assert len(qkv) == 3 and qkv[0] == qkv[1] != qkv[2]  # q and k share a group, v has its own
    q, v = qkv[0][0][0], qkv[2][0][0]
    assert space.groups[q].parent == space.groups[v].parent is not None


def test_levit_per_head_bias_tables(timm: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    m = timm.create_model("levit_128s", pretrained=False, num_classes=5, img_size=64).eval()
    for attn in {type(a) for a in m.modules() if hasattr(a, "attention_bias_cache")}:
        # In eval mode LeViT caches its gathered bias tables: a copy loaded with other weights would keep the
        # old ones. Gather them on every call (what it does in training), so the comparison sees the new weights.
        monkeypatch.setattr(attn, "get_attention_biases",
                            lambda self, device: self.attention_biases[:, self.attention_bias_idxs])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    space = assert_preserves(m, x, "fx", std=0.1)
    bias = space.tensors["stages.0.blocks.0.attn.attention_biases"]
    heads = bias.axes[0][0][0][0]
    assert space.groups[heads].kind == "head" and not space.groups[heads].fixed  # rows follow the heads
    assert space.groups[bias.axes[1][0][0][0]].fixed  # columns index relative positions


def test_eva_concatenated_bias_is_refused_in_one_line(timm: Any) -> None:
    """EVA builds its fused q/k/v bias by concatenating parameters (not supported): refused, named."""
    m = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=28, patch_size=14, embed_dim=32,
                          depth=1, num_heads=4, num_classes=5).eval()
    with pytest.raises(UnsupportedLayerError) as err:
        WeightSpace.from_module(m, torch.randn(2, 3, 28, 28))
    msg = str(err.value)
    assert "blocks.0.attn" in msg and "'cat'" in msg and "EvaAttention" in msg and "\n" not in msg

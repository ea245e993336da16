"""The flat-weights MLP baseline: shapes, typed errors, and that it is (by design) not permutation-invariant."""

from __future__ import annotations

import pytest
import torch

from wsl.archs import REGISTRY
from wsl.errors import WslError
from wsl.graph import WeightSpaceFeatures
from wsl.nn.flat import FlatMLPNet
from wsl.nn.pooling import MetaModelError
from wsl.space import WeightSpace, random_permutation


def _stack(space: WeightSpace, n: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {t.name: torch.randn(n, *t.shape, generator=gen) for t in space.spec.tensors}


def test_flat_mlp_reads_every_entry_and_sees_unit_order() -> None:
    torch.manual_seed(0)
    space = WeightSpace.from_module(REGISTRY["small_cnn"]())
    net = FlatMLPNet(space, out_features=3, hidden=[32]).eval()
    sd = _stack(space, 5, 0)
    assert net.width == sum(v[0].numel() for v in sd.values())
    out = net(sd)
    assert out.shape == (5, 3)
    torch.testing.assert_close(net(WeightSpaceFeatures.from_state_dicts(space, sd)), out)
    perm = random_permutation(space, torch.Generator().manual_seed(1))
    permuted = space.permute(sd, perm, batched=True)
    assert not torch.allclose(net(permuted), out, atol=1e-4)  # a baseline without the symmetry


def test_flat_mlp_refuses_a_different_space() -> None:
    space = WeightSpace.from_module(REGISTRY["small_cnn"]())
    other = WeightSpace.from_module(REGISTRY["mlp"](sizes=[4, 6, 3]))
    net = FlatMLPNet(space)
    with pytest.raises(WslError):
        net(_stack(other, 2, 0))
    with pytest.raises(MetaModelError, match="expected WeightSpaceFeatures"):
        net(torch.zeros(2, 10))

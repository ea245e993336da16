"""Weight matching: exact on permuted copies of every supported family, function-preserving, typed refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from wsl.align import weight_matching
from wsl.archs import REGISTRY, example_input
from wsl.errors import SpaceMismatchError
from wsl.space import WeightSpace, invert_permutation, random_permutation

from tests.test_space import FAMILIES, _out, _randomize

FAST = sorted(n for n in FAMILIES if n != "resnet18")  # resnet18: benchmarks/ (about 30 s here)


def _setup(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, WeightSpace]:
    module, x = FAMILIES[name]
    module = _randomize(copy.deepcopy(module), seed)
    x = example_input(module, batch=2, generator=torch.Generator().manual_seed(0)) if x is None else x
    return module, x, WeightSpace.from_module(module, x)


@pytest.mark.parametrize("name", FAST)
def test_aligning_a_permuted_copy_recovers_the_inverse_permutation_exactly(name: str) -> None:
    module, _, space = _setup(name)
    sd = module.state_dict()
    perms = random_permutation(space, torch.Generator().manual_seed(7))
    moved = space.permute(sd, perms)
    result = weight_matching(sd, moved, space)
    inverse = invert_permutation(perms)
    assert set(result.perms) == set(inverse)
    for g, p in inverse.items():
        assert torch.equal(result.perms[g], p), f"{name}: group {space.group_name(g)}"
    back = result.apply(moved)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    assert result.converged and result.distance_after == 0.0 < result.distance_before


@pytest.mark.parametrize("name", ["mlp", "residual_cnn", "multihead_attention", "vit", "groupnorm"])
def test_aligning_never_changes_the_function(name: str) -> None:
    a, x, space = _setup(name, seed=0)
    b, _, _ = _setup(name, seed=1)  # an independent network of the same space
    result = weight_matching(a, b, space)
    assert result.objective_after >= result.objective_before
    assert result.distance_after <= result.distance_before
    aligned = copy.deepcopy(b)
    aligned.load_state_dict(result.apply(b.state_dict()))
    torch.testing.assert_close(_out(aligned, x), _out(b, x), atol=1e-5, rtol=1e-5)
    assert any(not torch.equal(aligned.state_dict()[k], b.state_dict()[k]) for k in b.state_dict())


def test_networks_of_different_spaces_are_refused_by_their_first_difference() -> None:
    a = REGISTRY["mlp"](sizes=[4, 8, 3])
    b = REGISTRY["mlp"](sizes=[4, 9, 3])
    with pytest.raises(SpaceMismatchError, match=r"shape \(8, 4\).*\(9, 4\)"):
        weight_matching(a, b)
    space = WeightSpace.from_module(a)
    with pytest.raises(SpaceMismatchError, match="model"):
        weight_matching(a.state_dict(), b.state_dict(), space)

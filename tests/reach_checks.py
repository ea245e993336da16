"""Shared checks of the issue-21 symmetry tests (grouped convs, concatenation, channels-last, LoRA).

:func:`check_preserved` is ``test_space.test_permutation_preserves_function`` as a helper: randomise
every float tensor of the module (weights, biases, norm parameters and statistics, layer scales), trace
it, then for two permutation seeds check that permuting changes the weights but not the function (float64,
1e-9 relative), that the inverse permutation restores every tensor bit-exactly, that the parameter graph
decodes bit-exactly and that dense features permute like the weights.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from wsl.graph import WeightSpaceFeatures, build_one, decode
from wsl.space import WeightSpace, invert_permutation, random_permutation

from tests.test_space import _out, _randomize

__all__ = ["check_preserved", "output", "randomized"]


def randomized(module: nn.Module, seed: int = 0) -> nn.Module:
    """A float64 copy with random values in every float tensor (running variances positive)."""
    return _randomize(copy.deepcopy(module), seed).double()


def output(module: nn.Module, x: Any) -> torch.Tensor:
    return _out(module, x)


def _double(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.double()
    return x


def check_preserved(module: nn.Module, x: Any, seeds: tuple[int, ...] = (1, 2), graph: bool = True,
                    features: bool = True, randomize: bool = True) -> WeightSpace:
    """Trace ``module`` and check the symmetries it reports (see module docstring); returns the space."""
    module = randomized(module) if randomize else module
    x = _double(x)
    space = WeightSpace.from_module(module, x)
    sd = module.state_dict()
    assert space.num_elements == sum(t.numel() for t in sd.values())
    ref = output(module, x)
    for seed in seeds:
        perms = random_permutation(space, torch.Generator().manual_seed(seed))
        assert perms, "no permutable group found"
        permuted = space.permute(sd, perms)
        assert any(not torch.equal(sd[k], permuted[k]) for k in sd), "the permutation changed nothing"
        other = copy.deepcopy(module)
        other.load_state_dict(permuted)
        torch.testing.assert_close(output(other, x), ref, atol=1e-9, rtol=1e-9)
        back = space.permute(permuted, invert_permutation(perms))
        assert all(torch.equal(back[k], sd[k]) for k in sd)
        if features:
            moved = WeightSpaceFeatures.from_state_dict(space, permuted)
            want = WeightSpaceFeatures.from_state_dict(space, sd).permute(perms)
            assert all(torch.equal(moved[k], want[k]) for k in moved)
    if graph:
        back = decode(build_one(space, sd), space)
        assert all(torch.equal(back[k], sd[k]) for k in sd)
    return space

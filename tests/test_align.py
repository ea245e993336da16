"""Weight matching: exact on permuted copies of every supported family, function-preserving, typed refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from wsl.align import activation_matching, barrier, barrier_height, interpolate, reset_batchnorm, weight_matching
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


# ----------------------------------------------------------------------------- linear mode connectivity


def test_interpolation_hits_the_end_points_exactly_and_keeps_counters() -> None:
    a = {"w": torch.randn(3, 4), "n": torch.tensor(5)}
    b = {"w": torch.randn(3, 4), "n": torch.tensor(9)}
    path = interpolate(a, b, [0.0, 0.25, 1.0])
    assert torch.equal(path[0]["w"], a["w"]) and torch.equal(path[2]["w"], b["w"])
    torch.testing.assert_close(path[1]["w"], 0.75 * a["w"] + 0.25 * b["w"])
    assert all(int(p["n"]) == 5 for p in path)
    with pytest.raises(SpaceMismatchError, match="shapes"):
        interpolate(a, {"w": torch.randn(4, 3), "n": b["n"]}, [0.5])


def test_barrier_height_by_hand() -> None:
    # line from 1.0 to 3.0; the midpoint 2.5 sits 0.5 above it, the others on or below it
    assert barrier_height([0, 0.5, 1], [1.0, 2.5, 3.0]) == pytest.approx(0.5)
    assert barrier_height([0, 0.5, 1], [1.0, 1.0, 3.0]) == pytest.approx(0.0)


def test_reset_batchnorm_gives_the_average_batch_statistics() -> None:
    bn = nn.BatchNorm1d(3)
    batches = [torch.randn(8, 3) * 2 + 1 for _ in range(4)]
    reset_batchnorm(bn, batches)
    torch.testing.assert_close(bn.running_mean, torch.stack([x.mean(0) for x in batches]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([x.var(0) for x in batches]).mean(0))
    assert not bn.training


def test_alignment_removes_the_barrier_between_a_network_and_its_permuted_copy() -> None:
    net, x, space = _setup("batchnorm")
    sd = net.state_dict()
    moved = space.permute(sd, random_permutation(space, torch.Generator().manual_seed(3)))
    target = _out(net, x)

    def loss(m: nn.Module) -> float:
        return float((_out(m, x) - target).pow(2).mean())

    data = [torch.randn(16, *x.shape[1:], generator=torch.Generator().manual_seed(i)) for i in range(3)]
    before = barrier(net, sd, moved, loss, alphas=5, bn_data=lambda: data)
    aligned = weight_matching(sd, moved, space).apply(moved)
    after = barrier(net, sd, aligned, loss, alphas=5)
    assert before.barrier > 1e-3 and before.barrier_bn_reset is not None
    assert after.barrier == pytest.approx(0.0, abs=1e-9)


# ----------------------------------------------------------------------------- activation matching
@pytest.mark.parametrize("name", ["mlp", "batchnorm", "residual_cnn", "bert_layer", "multihead_attention"])
def test_activation_matching_recovers_a_permuted_copy(name: str) -> None:
    net, x, space = _setup(name)
    moved = copy.deepcopy(net)
    perms = random_permutation(space, torch.Generator().manual_seed(11))
    moved.load_state_dict(space.permute(net.state_dict(), perms))
    gen = torch.Generator().manual_seed(0)
    if x.is_floating_point():
        data = [torch.randn(8, *x.shape[1:], generator=gen, dtype=x.dtype) for _ in range(4)]
    else:
        data = [torch.randint(0, int(x.max()) + 1, (8, *x.shape[1:]), generator=gen) for _ in range(4)]
    result = activation_matching(net, moved, data, space)
    back = result.apply(moved.state_dict())
    assert all(torch.equal(back[k], v) for k, v in net.state_dict().items())

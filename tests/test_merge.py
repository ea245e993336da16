"""Merge methods against hand-computed results on tiny tensors, plus alignment-aware merges."""

from __future__ import annotations

import math

import pytest
import torch

from wsl.align.merge import METHODS, make_method, slerp
from wsl.errors import ConfigError, SpaceMismatchError
from wsl.space import random_permutation

from tests.test_align import _setup

T = torch.tensor


def _sd(*w: float, n: int = 3) -> dict[str, torch.Tensor]:
    return {"w": T([float(v) for v in w]), "n": torch.tensor(n)}


def test_mean() -> None:
    out = make_method("mean").merge([_sd(1, 2), _sd(3, 6)])
    assert torch.equal(out["w"], T([2.0, 4.0])) and int(out["n"]) == 3


def test_task_arithmetic() -> None:
    base = _sd(1, 1, n=7)
    out = make_method("task_arithmetic", {"scale": 0.5}).merge([_sd(2, 1), _sd(1, 5)], base)
    # 1 + 0.5 * ((2-1) + (1-1)) = 1.5 ; 1 + 0.5 * ((1-1) + (5-1)) = 3
    assert torch.equal(out["w"], T([1.5, 3.0])) and int(out["n"]) == 7


def test_ties_trims_elects_and_averages_by_hand() -> None:
    base = {"w": T([0.0, 0.0, 0.0, 0.0])}
    m1 = {"w": T([3.0, -1.0, 0.5, 2.0])}
    m2 = {"w": T([-1.0, -2.0, 4.0, 1.0])}
    m3 = {"w": T([2.0, 0.2, -3.0, 0.1])}
    # density 0.5 keeps the 2 largest |tau| per model:
    #   m1 -> [3, 0, 0, 2]   m2 -> [0, -2, 4, 0]   m3 -> [2, 0, -3, 0]
    # elected signs (sign of the sums): [+, -, +, +]
    # agreeing entries: e0 {3, 2} -> 2.5; e1 {-2} -> -2; e2 {4} -> 4; e3 {2} -> 2
    out = make_method("ties", {"density": 0.5}).merge([m1, m2, m3], base)
    assert torch.allclose(out["w"], T([2.5, -2.0, 4.0, 2.0]))


def test_dare_drops_and_rescales_with_its_seed() -> None:
    base = {"w": torch.zeros(1000)}
    m = {"w": torch.ones(1000)}
    out = make_method("dare", {"drop": 0.75, "seed": 3}).merge([m], base)["w"]
    assert set(out.unique().tolist()) <= {0.0, 4.0}  # kept entries rescaled by 1 / (1 - 0.75)
    assert abs(float((out > 0).double().mean()) - 0.25) < 0.05
    assert torch.equal(out, make_method("dare", {"drop": 0.75, "seed": 3}).merge([m], base)["w"])
    assert not torch.equal(out, make_method("dare", {"drop": 0.75, "seed": 4}).merge([m], base)["w"])


def test_slerp_by_hand() -> None:
    a, b = T([1.0, 0.0]), T([0.0, 1.0])
    torch.testing.assert_close(slerp(a, b, 0.5).float(), T([math.sqrt(0.5), math.sqrt(0.5)]))
    torch.testing.assert_close(slerp(a, 2 * a, 0.25).float(), T([1.25, 0.0]))  # parallel: linear
    out = make_method("slerp", {"t": 0.0}).merge([{"w": a}, {"w": b}])
    assert torch.equal(out["w"], a)
    with pytest.raises(ConfigError, match="exactly two"):
        make_method("slerp").merge([{"w": a}] * 3)


def test_methods_that_need_a_base_say_so_and_bad_parameters_are_named() -> None:
    for name in ("task_arithmetic", "ties", "dare"):
        with pytest.raises(ConfigError, match="needs a base"):
            make_method(name).merge([_sd(1, 2)])
    with pytest.raises(ConfigError, match="no parameter 'lambda'.*scale"):
        make_method("ties", {"lambda": 1.0})
    with pytest.raises(ConfigError, match="unknown; valid: aligned_mean"):
        make_method("fisher")
    with pytest.raises(SpaceMismatchError, match="model 1"):
        make_method("mean").merge([{"w": T([1.0, 2.0])}, {"w": T([1.0, 2.0, 3.0])}])


@pytest.mark.parametrize("method", ["aligned_mean", "barycentre"])
def test_aligned_merges_of_permuted_copies_give_the_network_back(method: str) -> None:
    net, x, space = _setup("batchnorm")
    sd = net.state_dict()
    gen = torch.Generator().manual_seed(0)
    copies = [space.permute(sd, random_permutation(space, gen)) for _ in range(3)]
    merged = make_method(method).merge([sd] + copies, space=space)
    for k, v in sd.items():
        torch.testing.assert_close(merged[k], v, rtol=1e-6, atol=1e-6)
    plain = make_method("mean").merge([sd] + copies)
    assert not torch.allclose(plain["1.weight"], sd["1.weight"])  # without alignment: a different network


def test_every_method_is_listed() -> None:
    assert set(METHODS) == {"mean", "aligned_mean", "barycentre", "task_arithmetic", "ties", "dare", "slerp"}

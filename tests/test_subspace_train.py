"""Training in a subspace: only coefficients move, the model stays in offset + span(V), full rank = full training."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsl.errors import ConfigError, SpaceMismatchError
from wsl.subspace.basis import fit
from wsl.subspace.stacks import TensorStack
from wsl.subspace.train import SubspaceModel, fit_module, random_directions


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 12), nn.Tanh(), nn.Linear(12, 3))


def _toy(seed: int = 0, n: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    teacher = torch.randn(4, 3, generator=gen)
    return x, (x @ teacher).argmax(1)


def _basis(rank: int):  # a "zoo": trained copies of the net from several seeds
    x, y = _toy(1)
    sds = []
    for s in range(6):
        net = _net(10 + s)
        fit_module(net, x, y, epochs=5, lr=1e-2, seed=s)
        sds.append({k: v.detach() for k, v in net.state_dict().items()})
    return fit(TensorStack.from_state_dicts(sds), rank=rank)


def test_random_directions_are_orthonormal_and_capped() -> None:
    v = random_directions(20, 6, torch.Generator().manual_seed(0))
    torch.testing.assert_close(v.T @ v, torch.eye(6), atol=1e-5, rtol=0)
    assert random_directions(5, 9, torch.Generator().manual_seed(0)).shape == (5, 5)
    assert random_directions(5, 0, torch.Generator().manual_seed(0)).shape == (5, 0)


def test_only_coefficients_move_and_the_model_stays_in_the_subspace() -> None:
    basis = _basis(rank=3)
    net = _net(99)
    before = copy.deepcopy(net.state_dict())
    model = SubspaceModel.from_basis(net, basis)
    assert [p for p in model.parameters() if p.requires_grad] == list(model.coefficients)
    assert model.n_trainable() == 3 * len(basis.names)
    x, y = _toy(2)
    with torch.no_grad():
        start = float(F.cross_entropy(model(x), y))
    hist = fit_module(model, x, y, epochs=30, lr=5e-2, seed=0)
    with torch.no_grad():
        end = float(F.cross_entropy(model(x), y))
    assert end < 0.7 * start and hist[-1] < hist[0]
    for k, v in net.state_dict().items():  # the module's own tensors are untouched and got no gradient
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in net.parameters())
    out = model.materialize()
    moved = 0.0
    for n in basis.names:
        d = out[n].reshape(-1).double() - basis.means[n].double()
        v = basis.dirs[n].double()
        residual = d - v @ (v.T @ d)
        assert float(residual.norm()) <= 1e-5 * max(float(d.norm()), 1.0)
        moved += float(d.norm())
    assert moved > 0.1
    # the materialized state_dict is the function the subspace model computes
    plain = _net(0)
    plain.load_state_dict(out)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), atol=1e-5, rtol=1e-5)


def test_full_rank_subspace_sgd_is_full_sgd_and_both_fit_a_tiny_problem() -> None:
    x, y = _toy(3, n=24)
    full = _net(5)
    sub = SubspaceModel.random(_net(5), k=10_000, seed=4)  # offset = the same init, V square orthogonal
    assert sub.n_trainable() == sum(p.numel() for p in full.parameters())
    h_full = fit_module(full, x, y, epochs=300, lr=0.3, optimizer="sgd", seed=1)
    h_sub = fit_module(sub, x, y, epochs=300, lr=0.3, optimizer="sgd", seed=1)
    assert h_full[-1] < 0.05 and h_sub[-1] < 0.05
    got = sub.materialize()
    for k, v in full.state_dict().items():
        torch.testing.assert_close(got[k], v, atol=2e-4, rtol=2e-4)
    # a small random subspace of the same init cannot follow: it ends elsewhere, with a higher loss
    small = SubspaceModel.random(_net(5), k=2, seed=4)
    h_small = fit_module(small, x, y, epochs=300, lr=0.3, optimizer="sgd", seed=1)
    assert h_small[-1] > 2 * h_full[-1]


def test_offsets_default_to_the_module_init_and_given_offsets_are_used() -> None:
    net = _net(7)
    init = {k: v.detach().clone() for k, v in net.named_parameters()}
    m = SubspaceModel.random(net, k=3, seed=0)
    for k, v in m.tensors().items():
        assert torch.equal(v, init[k])  # c = 0 at the start
    offs = {k: torch.full_like(v, 0.5).reshape(-1) for k, v in init.items()}
    m2 = SubspaceModel.random(_net(7), k=3, offsets=offs, seed=0)
    assert all(torch.equal(v, torch.full_like(v, 0.5)) for v in m2.tensors().values())


def test_errors() -> None:
    net = _net(0)
    with pytest.raises(SpaceMismatchError, match="no parameter 'nope'"):
        SubspaceModel(net, {"nope": torch.zeros(3)}, {"nope": torch.zeros(3, 1)})
    with pytest.raises(SpaceMismatchError, match="0.weight"):
        SubspaceModel(net, {"0.weight": torch.zeros(5)}, {"0.weight": torch.zeros(5, 1)})
    with pytest.raises(ConfigError, match="same tensors"):
        SubspaceModel(net, {"0.bias": torch.zeros(12)}, {})
    with pytest.raises(ConfigError, match="k must be"):
        SubspaceModel.random(net, k=-1)
    frozen = _net(0)
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable"):
        fit_module(frozen, *_toy(), epochs=1, lr=0.1)

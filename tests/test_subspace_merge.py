"""Subspace merge: the plain mean when the basis is fit on the merged models, a projection of it otherwise."""

from __future__ import annotations

import pytest
import torch

from wsl.align.merge import make_method
from wsl.errors import ConfigError, SpaceMismatchError
from wsl.subspace.basis import fit
from wsl.subspace.merge import SubspaceMerge, subspace_merge
from wsl.subspace.stacks import TensorStack

SHAPES = {"a.weight": (7, 5), "a.bias": (7,), "b.weight": (3, 7, 2)}


def _models(n: int, seed: int, offset: float = 0.0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        sd = {k: offset + torch.randn(s, generator=gen) * (1 + torch.rand(1, generator=gen)) for k, s in SHAPES.items()}
        sd["steps"] = torch.tensor(11)
        out.append(sd)
    return out


def _plain_mean(models: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([m[k].double() for m in models]).mean(0) for k in SHAPES}


@pytest.mark.parametrize("rank", [None, 0, 1, 3])
@pytest.mark.parametrize("combine", ["mean", "sum"])
def test_basis_fit_on_the_merged_models_gives_the_plain_mean(rank: int | None, combine: str) -> None:
    models = _models(6, seed=1 + (rank or 0))
    merged = subspace_merge(models, rank=rank, combine=combine)
    want = _plain_mean(models)
    for k in SHAPES:
        assert merged[k].dtype == torch.float32
        torch.testing.assert_close(merged[k].double(), want[k], atol=2e-6, rtol=1e-6)
    assert int(merged["steps"]) == 11
    # and the same through the merge-method interface
    via = SubspaceMerge(rank=rank, combine=combine).merge(models)
    plain = make_method("mean").merge(models)
    for k in SHAPES:
        torch.testing.assert_close(via[k], plain[k], atol=2e-6, rtol=1e-6)


def test_basis_from_another_zoo_projects_the_mean_onto_its_affine_span() -> None:
    zoo = _models(20, seed=5, offset=0.3)
    group = _models(3, seed=9)
    rank = 4
    basis = fit(TensorStack.from_state_dicts([{k: m[k] for k in SHAPES} for m in zoo]), rank=rank)
    merged = subspace_merge(group, basis)
    summed = subspace_merge(group, basis, combine="sum")
    mean = _plain_mean(group)
    for k in SHAPES:
        # reference: dense float64 SVD of the centred zoo
        x = torch.stack([m[k].double().reshape(-1) for m in zoo])
        m_zoo = x.mean(0)
        v = torch.linalg.svd(x - m_zoo, full_matrices=False).Vh[:rank].T
        proj = v @ (v.T @ (mean[k].reshape(-1) - m_zoo))
        want = (m_zoo + proj).reshape(SHAPES[k])
        torch.testing.assert_close(merged[k].double(), want, atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(summed[k].double(), (m_zoo + 3 * proj).reshape(SHAPES[k]), atol=5e-5, rtol=1e-5)
        # it is not the mean: the part of (mean - m_zoo) outside the span is gone
        lost = float((mean[k] - want).norm())
        assert lost > 0.5 * float((mean[k].reshape(-1) - m_zoo).norm()) > 0
        assert float((merged[k].double() - mean[k]).norm()) == pytest.approx(lost, rel=1e-3)


def test_full_rank_basis_of_a_zoo_containing_the_models_returns_their_mean() -> None:
    zoo = _models(8, seed=3)
    group = zoo[2:5]
    basis = fit(TensorStack.from_state_dicts([{k: m[k] for k in SHAPES} for m in zoo]), rank=7)
    merged = subspace_merge(group, basis)
    mean = _plain_mean(group)
    for k in SHAPES:
        torch.testing.assert_close(merged[k].double(), mean[k], atol=5e-5, rtol=1e-5)
    # truncated, the same basis no longer returns the mean
    cut = subspace_merge(group, basis, rank=2)
    assert max(float((cut[k].double() - mean[k]).abs().max()) for k in SHAPES) > 0.05


def test_errors() -> None:
    models = _models(3, seed=0)
    with pytest.raises(ConfigError, match="combine"):
        subspace_merge(models, combine="median")
    with pytest.raises(ConfigError, match="no models"):
        subspace_merge([])
    with pytest.raises(ConfigError, match="rank"):
        subspace_merge(models, rank=-1)
    bad = [dict(models[0]), dict(models[1])]
    bad[1]["a.bias"] = torch.zeros(8)
    with pytest.raises(SpaceMismatchError, match="a.bias"):
        subspace_merge(bad)
    basis = fit(TensorStack.from_state_dicts([{"a.weight": m["a.weight"]} for m in models]), rank=1)
    with pytest.raises(SpaceMismatchError, match="not in the basis"):
        subspace_merge(models, basis)

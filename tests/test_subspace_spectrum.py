"""wsl.subspace core: Gram spectra vs dense SVD, directions, bases, the MP and shuffled nulls, file stacks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from wsl.errors import CheckpointError, SpaceMismatchError
from wsl.io import load_state_dict, save_state_dict
from wsl.subspace.basis import fit, load_basis
from wsl.subspace.halves import half_cosines, split_halves
from wsl.subspace.nulls import mp_cdf, mp_spectrum
from wsl.subspace.spectrum import directions, gram, overlap, spectrum
from wsl.subspace.stacks import FileStack, ShuffledStack, TensorStack

from tests.subspace_fixtures import planted_state_dicts, write_checkpoints


def _random_stack(n: int = 9, seed: int = 0, dtype: torch.dtype = torch.float32) -> TensorStack:
    g = torch.Generator().manual_seed(seed)
    return TensorStack({"w": torch.randn(n, 7, 5, generator=g, dtype=dtype) * 2 + 1,
                        "b": torch.randn(n, 7, generator=g, dtype=dtype)})


def _dense(stack: TensorStack, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = stack.tensors[name].reshape(len(stack), -1).double()
    xc = x - x.mean(0)
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    return s, vh, x.mean(0)


@pytest.mark.parametrize("block", [1, 5, 12, 1 << 20])  # 1 entry, one row, rows straddling, the whole tensor
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_spectrum_equals_dense_svd(block: int, dtype: torch.dtype) -> None:
    stack = _random_stack(seed=block, dtype=dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for name in stack.names:
        s, _, _ = _dense(stack, name)
        sp = spectrum(stack, name, block=block, dtype=dtype)
        r = min(len(stack) - 1, stack.numel(name))
        assert sp.eigenvalues.shape == (r,)
        assert torch.allclose(sp.eigenvalues, (s ** 2)[:r], rtol=tol, atol=tol * float(s[0] ** 2))
        evr = (s ** 2)[:r] / (s ** 2).sum()
        assert torch.allclose(sp.explained_variance_ratio, evr, atol=tol * 10)
        cum = torch.cumsum(evr, 0)
        assert sp.rank_for(0.9) == int((cum < 0.9).sum()) + 1


def test_directions_are_orthonormal_dense_right_singular_vectors() -> None:
    stack = _random_stack(n=11, seed=3, dtype=torch.float64)
    s, vh, mean = _dense(stack, "w")
    sp, mu, v = directions(stack, "w", 6, block=10, dtype=torch.float64)
    assert v.shape == (35, 6)
    assert torch.allclose(v.T @ v, torch.eye(6, dtype=v.dtype), atol=1e-10)
    assert torch.allclose(mu, mean, atol=1e-12)
    cos = (v.T @ vh[:6].T).diagonal().abs()  # same vectors up to sign (distinct singular values)
    assert torch.allclose(cos, torch.ones(6, dtype=cos.dtype), atol=1e-8)
    assert overlap(v, vh[:6].T) == pytest.approx(1.0, abs=1e-10)


def test_full_rank_basis_round_trips_every_fitting_model() -> None:
    sds = planted_state_dicts(10, noise=0.3, seed=4)
    stack = TensorStack.from_state_dicts(sds)
    basis = fit(stack, rank=len(stack) - 1, block=7)
    for sd in sds:
        back = basis.roundtrip(sd)
        for n, t in sd.items():
            assert torch.allclose(back[n], t, atol=2e-5 * float(t.abs().max())), n
    mean_only = basis.truncate(0).roundtrip(sds[0])
    assert torch.equal(mean_only["0.weight"], basis.means["0.weight"].reshape(10, 6))


def test_basis_save_load_is_exact_and_bad_folders_raise(tmp_path: Path) -> None:
    stack = TensorStack.from_state_dicts(planted_state_dicts(8, seed=5))
    basis = fit(stack, variance=0.9, info={"source": "test"})
    basis.save(tmp_path / "b")
    back = load_basis(tmp_path / "b")
    assert back.names == basis.names and back.info["source"] == "test"
    for n in basis.names:
        assert torch.equal(back.means[n], basis.means[n]) and torch.equal(back.dirs[n], basis.dirs[n])
    wrong = dict(planted_state_dicts(1, seed=6)[0])
    wrong["3.weight"] = torch.zeros(8, 11)
    with pytest.raises(SpaceMismatchError, match="3.weight"):
        back.project(wrong)

    card = json.loads((tmp_path / "b" / "basis.json").read_text())
    card["tensors"]["0.weight"]["rank"] += 1
    (tmp_path / "b" / "basis.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="0.weight"):
        load_basis(tmp_path / "b")
    (tmp_path / "b" / "basis.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        load_basis(tmp_path / "b")

    basis.save(tmp_path / "c")
    tensors = load_state_dict(tmp_path / "c" / "basis.safetensors")
    del tensors["6.bias.dirs"]
    save_state_dict(tensors, tmp_path / "c" / "basis.safetensors")
    with pytest.raises(CheckpointError, match="6.bias"):
        load_basis(tmp_path / "c")


def test_mp_null_matches_a_gaussian_matrix() -> None:
    n, p = 201, 800
    x = torch.randn(n, p, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    stack = TensorStack({"x": x})
    data = spectrum(stack, "x", dtype=torch.float64)
    null = mp_spectrum(data)
    assert null.eigenvalues.shape == data.eigenvalues.shape == (n - 1,)
    rel = (data.eigenvalues / null.eigenvalues - 1).abs()
    bulk = rel[len(rel) // 10: -len(rel) // 10]  # the edges fluctuate on the N^(-2/3) scale
    assert float(bulk.max()) < 0.05 and float(rel.median()) < 0.02
    # KS-type check of the law itself: unit-scale eigenvalues (true variance 1) against mp_cdf
    m, big = n - 1, p
    unit = (data.eigenvalues / big).sort().values
    ecdf = torch.arange(1, m + 1, dtype=torch.float64) / m
    theory = mp_cdf(unit, m / big)
    ks = float(torch.maximum((ecdf - theory).abs(), (ecdf - 1 / m - theory).abs()).max())
    assert ks < 0.04
    wrong = mp_cdf(unit, 0.5 * m / big)  # a mismatched ratio must be visible to the same check
    assert float((ecdf - wrong).abs().max()) > 0.1


def test_shuffled_null_keeps_values_and_destroys_a_planted_direction() -> None:
    n, p = 40, 600
    g = torch.Generator().manual_seed(8)
    v = torch.randn(p, generator=g)
    x = torch.randn(p, generator=g) + torch.randn(n, 1, generator=g) * 5 * v + 0.05 * torch.randn(n, p, generator=g)
    stack = TensorStack({"x": x})
    for block in (p, 97):
        shuf = ShuffledStack(stack, seed=1)
        xs = torch.cat([b for _, b in shuf.blocks("x", block=block)], dim=1)
        assert torch.equal(xs.sort(dim=1).values, x.sort(dim=1).values)
        assert not torch.equal(xs, x)
    data = spectrum(stack, "x")
    null = spectrum(ShuffledStack(stack, seed=1), "x")
    # the iid value: independent entries with each model's own spread (shuffling keeps every row's values)
    iid = spectrum(TensorStack({"x": torch.randn(n, p, generator=g) * x.std(dim=1, keepdim=True)}), "x")
    assert data.rank_for(0.9) == 1 and data.explained_at(1) > 0.99
    assert null.effective_rank == pytest.approx(iid.effective_rank, rel=0.1)
    a, b = split_halves([str(i) for i in range(n)], seed=0)
    assert half_cosines(gram(stack, "x"), a, b, 1)["overlap"] > 0.99
    assert half_cosines(gram(ShuffledStack(stack, seed=1), "x"), a, b, 1)["overlap"] < 0.1


def test_planted_rank_two_zoo_beats_its_shuffled_null() -> None:
    stack = TensorStack.from_state_dicts(planted_state_dicts(30, rank=2, noise=0.01, seed=9))
    shuf = ShuffledStack(stack, seed=2)
    for name in stack.names:
        assert spectrum(stack, name).rank_for(0.9) <= 2, name
        if stack.numel(name) >= 20:
            assert spectrum(shuf, name).rank_for(0.9) > 2, name


def test_file_stack_gives_the_same_spectra_as_a_tensor_stack(tmp_path: Path) -> None:
    paths = write_checkpoints(tmp_path, n=7, seed=10)
    files = FileStack(paths)
    mem = TensorStack.from_state_dicts([load_state_dict(p) for p in paths])
    assert files.names == mem.names and files.shapes == mem.shapes
    for name in mem.names:
        a = spectrum(files, name, block=4).eigenvalues
        b = spectrum(mem, name).eigenvalues
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * float(b.max())), name
    assert torch.equal(files.model_tensor(3, "3.weight"), mem.model_tensor(3, "3.weight"))
    assert math.isclose(spectrum(files, "0.weight").total_variance, spectrum(mem, "0.weight").total_variance,
                        rel_tol=1e-5)

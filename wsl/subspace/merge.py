"""Subspace merge (Kaushik et al. 2025): project the models onto a shared basis, combine coefficients, reconstruct.

With a per-tensor basis ``(mu_t, V_t)`` (mean ``P_t``, orthonormal
directions ``P_t x k_t``) and models ``theta_1 .. theta_n``::

    c_i = V^T (theta_i - mu)                  (project every model)
    c   = (1/n) sum_i c_i   ("mean")   or   sum_i c_i   ("sum")
    merged = mu + V c                         (reconstruct)

The paper's text on merging could not be read here beyond its abstract;
``"mean"`` is the natural reading and ``"sum"`` is what the public
replication (cahlen/universal-subspace-stress-test, phase 3) implemented.

**When it is the plain mean.** If the basis is fit on the merged models
themselves, ``mu = theta_bar = (1/n) sum_i theta_i`` and

    sum_i c_i = V^T sum_i (theta_i - theta_bar) = V^T 0 = 0,

so ``merged = mu = theta_bar`` for *any* rank ``k`` (truncated or full) and
for both combinations: the subspace merge is exactly the mean merge. It is
the aligned mean when the models (and so the basis) were aligned first.

**When it is not.** With a basis fit on other models (a zoo with mean
``m``), ``"mean"`` gives

    merged = m + V V^T (theta_bar - m),

the orthogonal projection of the plain mean onto the affine subspace
``m + span(V)``. It equals ``theta_bar`` exactly when ``theta_bar - m`` lies
in ``span(V)`` (for instance every merged model lies in the zoo's affine
span and the basis keeps the zoo's full rank), and otherwise loses the
component of ``theta_bar - m`` outside the span. ``"sum"`` gives
``m + n V V^T (theta_bar - m)``, which moves ``n`` times as far along the span.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from wsl.errors import ConfigError, SpaceMismatchError
from wsl.subspace.basis import Basis, fit
from wsl.subspace.stacks import TensorStack

__all__ = ["COMBINE", "SubspaceMerge", "subspace_merge"]

COMBINE = ("mean", "sum")

StateDict = Mapping[str, torch.Tensor]


def _check_models(models: Sequence[StateDict]) -> None:
    if not models:
        raise ConfigError("subspace merge: no models to merge")
    ref = models[0]
    for i, sd in enumerate(models[1:], 1):
        if set(sd) != set(ref):
            diff = sorted(set(sd) ^ set(ref))
            raise SpaceMismatchError(f"subspace merge: model {i} has different tensors than model 0 (first: "
                                     f"{diff[0]!r})")
        for k, t in ref.items():
            if tuple(sd[k].shape) != tuple(t.shape):
                raise SpaceMismatchError(f"subspace merge: {k!r} has shape {tuple(sd[k].shape)} in model {i} and "
                                         f"{tuple(t.shape)} in model 0")


def subspace_merge(models: Sequence[StateDict], basis: Basis | None = None, rank: int | None = None,
                   combine: str = "mean") -> dict[str, torch.Tensor]:
    """Merge ``models`` in a shared per-tensor subspace (see the module docstring).

    ``basis`` is a fitted :class:`~wsl.subspace.basis.Basis` (from a zoo, or
    any other models); without one the basis is fit on ``models`` themselves
    (``rank`` directions per tensor, default all ``n - 1``), which makes the
    result the plain mean. ``rank`` with a given basis truncates it. Every
    floating tensor of the models must be in the basis; integer entries
    (counters) are taken from model 0.
    """
    if combine not in COMBINE:
        raise ConfigError(f"subspace merge: combine must be one of {COMBINE}, got {combine!r}")
    if rank is not None and int(rank) < 0:
        raise ConfigError(f"subspace merge: rank must be >= 0, got {rank}")
    _check_models(models)
    floats = [k for k, t in models[0].items() if t.is_floating_point()]
    if not floats:
        raise ConfigError("subspace merge: the models have no floating-point tensors")
    if basis is None:
        stack = TensorStack.from_state_dicts([{k: sd[k].detach().to(torch.float64) for k in floats} for sd in models])
        basis = fit(stack, rank=len(models) - 1 if rank is None else int(rank))
    elif rank is not None:
        basis = basis.truncate(int(rank))
    outside = [k for k in floats if k not in basis.shapes]
    if outside:
        raise SpaceMismatchError(f"subspace merge: tensor {outside[0]!r} of the models is not in the basis "
                                 f"({len(basis.shapes)} tensors)")
    coefficients: dict[str, torch.Tensor] = {}
    for i, sd in enumerate(models):
        for name, c in basis.project({k: sd[k].detach() for k in basis.shapes}, where=f"model {i}").items():
            c = c.to(torch.float64)
            coefficients[name] = coefficients[name] + c if name in coefficients else c
    if combine == "mean":
        coefficients = {k: c / len(models) for k, c in coefficients.items()}
    rebuilt = _reconstruct64(basis, coefficients)
    out: dict[str, torch.Tensor] = {}
    for k, ref in models[0].items():
        out[k] = rebuilt[k].to(ref.dtype) if ref.is_floating_point() else ref.clone()
    return out


def _reconstruct64(basis: Basis, coefficients: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``mu + V c`` per tensor, in float64 (Basis.reconstruct rounds to float32)."""
    out = {}
    for n, shape in basis.shapes.items():
        v = basis.dirs[n].to(torch.float64)
        flat = basis.means[n].to(torch.float64)
        if v.shape[1]:
            flat = flat + v @ coefficients[n].to(flat.device)
        out[n] = flat.reshape(shape)
    return out


@dataclass
class SubspaceMerge:
    """:func:`subspace_merge` behind the ``merge(models, base, space)`` interface of ``wsl.align.merge``.

    ``base`` and ``space`` are accepted and ignored (the method needs neither).
    """

    rank: int | None = None
    combine: str = "mean"
    basis: Any = None
    name = "subspace"

    def merge(self, models: Sequence[StateDict], base: StateDict | None = None,
              space: Any = None) -> dict[str, torch.Tensor]:
        return subspace_merge(models, self.basis, self.rank, self.combine)

"""Merge methods: several networks of one weight space -> one network.

Every method is a small class with ``merge(models, base, space)``; floating
entries are merged, integer entries (counters) are taken from the base, else
the first model. With ``theta_i`` the models, ``b`` the base and
``tau_i = theta_i - b`` their task vectors:

=================  ===========================================================================
``mean``            ``sum_i theta_i / n`` (no alignment)
``aligned_mean``    align every model to ``theta_0`` (weight matching), then ``mean``
``barycentre``      align all to the current mean and average again, until no permutation changes
``task_arithmetic`` ``b + lambda * sum_i tau_i``
``ties``            trim each ``tau_i`` to its largest ``density`` fraction by magnitude (per
                    tensor); elect a sign per entry, ``sign(sum_i trimmed tau_i)``; average the
                    trimmed entries that agree with it; ``b + lambda * that``  (Yadav et al. 2023)
``dare``            drop each entry of ``tau_i`` with probability ``drop`` and rescale the rest by
                    ``1 / (1 - drop)`` (seeded); ``b + lambda * sum_i``  (Yu et al. 2024)
``slerp``           two models, per tensor: spherical interpolation at ``t`` of the flattened
                    tensors (linear when they are nearly parallel)
=================  ===========================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from wsl.errors import ConfigError, SpaceMismatchError
from wsl.space import WeightSpace

from wsl.align.weight_matching import weight_matching

StateDict = Mapping[str, torch.Tensor]


def _check(models: Sequence[StateDict], base: StateDict | None) -> None:
    if not models:
        raise ConfigError("merge: no models to merge")
    ref = models[0]
    named = [(f"model {i}", sd) for i, sd in enumerate(models)][1:] + ([("the base", base)] if base is not None else [])
    for what, sd in named:
        if set(sd) != set(ref):
            diff = sorted(set(sd) ^ set(ref))
            raise SpaceMismatchError(f"merge: {what} has different tensors than model 0 (first: '{diff[0]}')")
        for k, t in ref.items():
            if sd[k].shape != t.shape:
                raise SpaceMismatchError(f"merge: '{k}' has shape {tuple(sd[k].shape)} in {what} "
                                         f"and {tuple(t.shape)} in model 0")


def _combine(models: Sequence[StateDict], base: StateDict | None, fn: Any) -> dict[str, torch.Tensor]:
    """Apply ``fn(stack (n, *shape) float64, base tensor or None) -> tensor`` to every floating entry."""
    _check(models, base)
    out = {}
    for k, ref in models[0].items():
        if not ref.is_floating_point():
            out[k] = (base[k] if base is not None else ref).clone()
            continue
        stack = torch.stack([sd[k].double() for sd in models])
        b = base[k].double() if base is not None else None
        out[k] = fn(stack, b).to(ref.dtype)
    return out


def _need_base(name: str, base: StateDict | None) -> StateDict:
    if base is None:
        raise ConfigError(f"merge method '{name}' needs a base model (base:)")
    return base


@dataclass
class Mean:
    name = "mean"

    def merge(self, models: Sequence[StateDict], base: StateDict | None = None,
              space: WeightSpace | None = None) -> dict[str, torch.Tensor]:
        return _combine(models, None, lambda s, b: s.mean(0))


@dataclass
class AlignedMean:
    """Align every model to ``models[reference]``, then average."""

    reference: int = 0
    name = "aligned_mean"

    def merge(self, models: Sequence[StateDict], base: StateDict | None = None,
              space: WeightSpace | None = None) -> dict[str, torch.Tensor]:
        if space is None:
            raise ConfigError("merge method 'aligned_mean' needs the weight space (an architecture)")
        ref = models[self.reference]
        aligned = [sd if i == self.reference else weight_matching(ref, sd, space).apply(sd)
                   for i, sd in enumerate(models)]
        return Mean().merge(aligned)


@dataclass
class Barycentre:
    """Iterate: align every model to the current mean, average; stop when nothing moves.

    ``start`` is where the iteration begins: ``"aligned"`` (the models
    aligned to the first one, then averaged) or ``"mean"`` (the plain mean).
    """

    max_iterations: int = 10
    start: str = "aligned"
    name = "barycentre"
    iterations: int = 0

    def merge(self, models: Sequence[StateDict], base: StateDict | None = None,
              space: WeightSpace | None = None) -> dict[str, torch.Tensor]:
        if space is None:
            raise ConfigError("merge method 'barycentre' needs the weight space (an architecture)")
        if self.start not in ("aligned", "mean"):
            raise ConfigError(f"barycentre: start must be 'aligned' or 'mean', got {self.start!r}")
        current = AlignedMean().merge(models, space=space) if self.start == "aligned" else Mean().merge(models)
        previous: list[dict[int, torch.Tensor]] | None = None
        for self.iterations in range(1, self.max_iterations + 1):
            results = [weight_matching(current, sd, space) for sd in models]
            perms = [r.perms for r in results]
            current = Mean().merge([r.apply(sd) for r, sd in zip(results, models)])
            if previous is not None and all(all(torch.equal(p[g], q[g]) for g in p) for p, q in zip(perms, previous)):
                break
            previous = perms
        return current


@dataclass
class TaskArithmetic:
    scale: float = 1.0
    name = "task_arithmetic"

    def merge(self, models: Sequence[StateDict], base: StateDict | None = None,
              space: WeightSpace | None = None) -> dict[str, torch.Tensor]:
        _need_base(self.name, base)
        return _combine(models, base, lambda s, b: b + self.scale * (s - b).sum(0))


@dataclass
class Ties:
    density: float = 0.2
    scale: float = 1.0
    name = "ties"

    def merge(self, models: Sequence[StateDict], base: StateDict | None = None,
              space: WeightSpace | None = None) -> dict[str, torch.Tensor]:
        _need_base(self.name, base)
        if not 0 < self.density <= 1:
            raise ConfigError(f"ties: density must be in (0, 1], got {self.density}")

        def fn(s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            tau = (s - b).flatten(1)
            keep = max(1, math.ceil(self.density * tau.shape[1]))
            idx = tau.abs().topk(keep, dim=1).indices
            trimmed = torch.zeros_like(tau).scatter(1, idx, tau.gather(1, idx))
            sign = torch.sign(trimmed.sum(0))
            agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
            mean = (trimmed * agree).sum(0) / agree.sum(0).clamp_min(1)
            return b + self.scale * mean.view_as(b)

        return _combine(models, base, fn)


@dataclass
class Dare:
    drop: float = 0.5
    scale: float = 1.0
    seed: int = 0
    name = "dare"

    def merge(self, models: Sequence[StateDict], base: StateDict | None = None,
              space: WeightSpace | None = None) -> dict[str, torch.Tensor]:
        _need_base(self.name, base)
        if not 0 <= self.drop < 1:
            raise ConfigError(f"dare: drop must be in [0, 1), got {self.drop}")
        gen = torch.Generator().manual_seed(self.seed)

        def fn(s: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            tau = s - b
            keep = (torch.rand(tau.shape, generator=gen, dtype=torch.float64) >= self.drop).double()
            return b + self.scale * (tau * keep / (1 - self.drop)).sum(0)

        return _combine(models, base, fn)


@dataclass
class Slerp:
    t: float = 0.5
    name = "slerp"

    def merge(self, models: Sequence[StateDict], base: StateDict | None = None,
              space: WeightSpace | None = None) -> dict[str, torch.Tensor]:
        if len(models) != 2:
            raise ConfigError(f"slerp merges exactly two models, got {len(models)}")

        def fn(s: torch.Tensor, b: Any) -> torch.Tensor:
            return slerp(s[0], s[1], self.t)

        return _combine(models, None, fn)


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation of two tensors viewed as vectors (lerp when nearly parallel)."""
    va, vb = a.flatten().double(), b.flatten().double()
    na, nb = va.norm(), vb.norm()
    if na < eps or nb < eps:
        return torch.lerp(a.double(), b.double(), t)
    cos = torch.clamp(torch.dot(va / na, vb / nb), -1.0, 1.0)
    omega = torch.arccos(cos)
    if float(omega.sin().abs()) < eps:
        return torch.lerp(a.double(), b.double(), t)
    w0 = torch.sin((1 - t) * omega) / torch.sin(omega)
    w1 = torch.sin(t * omega) / torch.sin(omega)
    return (w0 * va + w1 * vb).view_as(a)


METHODS: dict[str, type] = {c.name: c for c in (Mean, AlignedMean, Barycentre, TaskArithmetic, Ties, Dare, Slerp)}


def make_method(name: str, parameters: Mapping[str, Any] | None = None) -> Any:
    """A merge method by name with its parameters; unknown names and parameters are ConfigErrors."""
    if name not in METHODS:
        raise ConfigError(f"merge method {name!r} is unknown; valid: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    fields = {f for f in cls.__dataclass_fields__ if f != "iterations"}
    params = dict(parameters or {})
    bad = sorted(set(params) - fields)
    if bad:
        raise ConfigError(f"merge method '{name}' has no parameter {bad[0]!r}; its parameters: "
                          f"{', '.join(sorted(fields)) or '(none)'}")
    return cls(**params)

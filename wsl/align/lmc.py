"""Linear mode connectivity: interpolate two networks and measure the loss barrier between them.

For weights ``a`` and ``b`` and ``theta(alpha) = (1 - alpha) a + alpha b``, the
barrier (Frankle et al. 2020; Entezari et al. 2022) is::

    B(a, b) = max over alpha of  L(theta(alpha)) - ((1 - alpha) L(a) + alpha L(b))

a height above the straight line between the end losses (``>= 0`` when the
end points are among the alphas). Aligning ``b`` to ``a`` first (weight
matching) removes the part of the barrier that is only a difference in unit
order.

**BatchNorm.** An interpolated network's BN running statistics are not the
interpolation of the end points' statistics: the activations' variance
collapses along the path. With ``bn_data`` each network on the path gets its
statistics recomputed on that data (:func:`reset_batchnorm`) before it is
evaluated; :func:`barrier` reports both curves when the network has BN.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from wsl.errors import SpaceMismatchError, WslError

StateDict = Mapping[str, torch.Tensor]
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def interpolate(a: StateDict, b: StateDict, alphas: Iterable[float]) -> list[dict[str, torch.Tensor]]:
    """``(1 - alpha) a + alpha b`` for each alpha; integer entries (counters) are taken from ``a``."""
    if set(a) != set(b):
        diff = sorted(set(a) ^ set(b))
        raise SpaceMismatchError(f"cannot interpolate state_dicts with different keys (first: '{diff[0]}')")
    for k in a:
        if a[k].shape != b[k].shape:
            raise SpaceMismatchError(f"cannot interpolate '{k}': shapes {tuple(a[k].shape)} and {tuple(b[k].shape)}")
    out = []
    for alpha in alphas:
        al = float(alpha)
        out.append({k: torch.lerp(a[k], b[k].to(a[k].dtype), al) if a[k].is_floating_point() else a[k].clone()
                    for k in a})
    return out


def has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, _BN) and m.track_running_stats for m in module.modules())


def reset_batchnorm(module: nn.Module, batches: Iterable[Any]) -> nn.Module:
    """Recompute every BatchNorm's running statistics as the plain average over ``batches``.

    ``batches`` yields inputs (or ``(input, target)`` pairs: the first element
    is used). The module is left in eval mode.
    """
    bns = [m for m in module.modules() if isinstance(m, _BN) and m.track_running_stats]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    module.train()
    seen = 0
    with torch.no_grad():
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            module(x)
            seen += 1
    for m, mom in zip(bns, saved):
        m.momentum = mom
    if bns and not seen:
        raise WslError("reset_batchnorm: the data yielded no batch")
    return module.eval()


@dataclass
class Barrier:
    """Losses along the path and the barrier height (see module docstring)."""

    alphas: list[float]
    losses: list[float]
    barrier: float
    losses_bn_reset: list[float] | None = None
    barrier_bn_reset: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def barrier_height(alphas: Sequence[float], losses: Sequence[float]) -> float:
    """``max_alpha L(alpha) - ((1 - alpha) L(0) + alpha L(1))`` with the end losses at the first/last alpha."""
    if len(alphas) != len(losses) or len(alphas) < 2:
        raise WslError("barrier: need at least two (alpha, loss) points")
    l0, l1, a0, a1 = losses[0], losses[-1], alphas[0], alphas[-1]
    line = [l0 + (al - a0) / (a1 - a0) * (l1 - l0) for al in alphas]
    return max(loss - ln for loss, ln in zip(losses, line))


def barrier(module: nn.Module, a: StateDict, b: StateDict, evaluate: Callable[[nn.Module], float],
            alphas: Sequence[float] | int = 11, bn_data: Callable[[], Iterable[Any]] | None = None) -> Barrier:
    """Loss barrier between ``a`` and ``b`` loaded into copies of ``module``.

    ``evaluate(net)`` returns the loss (or any lower-is-better number) of a
    network in eval mode; it runs under ``torch.no_grad()``. ``bn_data`` is a callable returning a fresh iterable
    of input batches; when given and the network has BatchNorm, each point is
    also evaluated after :func:`reset_batchnorm`.
    """
    alist = [i / (alphas - 1) for i in range(alphas)] if isinstance(alphas, int) else [float(x) for x in alphas]
    net = copy.deepcopy(module)
    losses, repaired = [], []
    repair = bn_data is not None and has_batchnorm(net)
    for sd in interpolate(a, b, alist):
        net.load_state_dict(sd)
        with torch.no_grad():
            losses.append(float(evaluate(net.eval())))
        if repair:
            assert bn_data is not None
            reset_batchnorm(net, bn_data())
            with torch.no_grad():
                repaired.append(float(evaluate(net.eval())))
    out = Barrier(alist, losses, barrier_height(alist, losses))
    if repair:
        out.losses_bn_reset, out.barrier_bn_reset = repaired, barrier_height(alist, repaired)
    return out

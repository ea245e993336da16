"""Late fusion of a weight-space meta-model with probe features (:mod:`wsl.tasks.probes`).

:class:`ProbeFusion` wraps any invariant meta-model ``f`` (dense NP/HNP/NFT or
graph NG-GNN/NG-T) built with ``embed`` outputs instead of one:

.. math::

    y = \\mathrm{MLP}\\big([\\, f(W),\\; g((p - \\mu) / \\sigma) \\,]\\big),

where ``p`` are the probe features of the same networks (their outputs on
fixed synthetic inputs), ``mu``/``sigma`` their per-feature mean and standard
deviation over the training split (buffers, saved with the model) and ``g``
a two-layer MLP. Both branches are invariant to the neuron permutations of
each network (``f`` by construction, ``p`` because a permuted network computes
the same function), so ``y`` is invariant.

The input is a :class:`Probed` pair; the wrapped model sees ``Probed.x``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wsl.errors import WslError

__all__ = ["ProbeFusion", "Probed"]


@dataclass
class Probed:
    """A meta-model input ``x`` and the probe features ``(N, F)`` of the same networks, in the same order."""

    x: Any
    probes: torch.Tensor


class ProbeFusion(nn.Module):
    """``y = MLP([inner(x), g(standardized probes)])`` (see module docstring).

    Args:
        inner: an invariant meta-model returning ``(N, embed)``.
        num_features: probe feature width ``F``.
        embed: output width of ``inner`` and of the probe branch ``g``.
        hidden: hidden width of ``g`` and of the fusion MLP.
        out_dim: outputs per network.
    """

    def __init__(self, inner: nn.Module, num_features: int, embed: int = 64, hidden: int = 128,
                 out_dim: int = 1) -> None:
        super().__init__()
        if num_features < 1 or embed < 1 or hidden < 1:
            raise WslError(f"ProbeFusion: num_features, embed and hidden must be >= 1, got "
                           f"{num_features}, {embed}, {hidden}")
        self.inner = inner
        self.num_features = int(num_features)
        self.register_buffer("mu", torch.zeros(num_features))
        self.register_buffer("sigma", torch.ones(num_features))
        self.probe_net = nn.Sequential(nn.Linear(num_features, hidden), nn.GELU(), nn.Linear(hidden, embed))
        self.fuse = nn.Sequential(nn.GELU(), nn.Linear(2 * embed, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    @torch.no_grad()
    def set_normalization(self, train_features: torch.Tensor) -> None:
        """Set ``mu``/``sigma`` from the training split's probe features ``(N, F)``."""
        f = train_features.to(self.mu.device, torch.float32)
        if f.dim() != 2 or f.shape[1] != self.num_features:
            raise WslError(f"ProbeFusion: expected training probe features (N, {self.num_features}), "
                           f"got {tuple(f.shape)}")
        self.mu.copy_(f.mean(0))
        self.sigma.copy_(f.std(0, unbiased=False).clamp(min=1e-4) if len(f) > 1 else torch.ones_like(self.mu))

    def forward(self, inp: Probed) -> torch.Tensor:
        if not isinstance(inp, Probed):
            raise WslError(f"ProbeFusion: expected a Probed input (weights + probe features), got "
                           f"{type(inp).__name__}; this predictor needs probe features")
        p = inp.probes.to(self.mu.device, self.mu.dtype)
        if p.dim() != 2 or p.shape[1] != self.num_features:
            raise WslError(f"ProbeFusion: probe features must be (N, {self.num_features}), got {tuple(p.shape)}")
        z = self.inner(inp.x)
        e = self.probe_net((p - self.mu) / self.sigma)
        if z.shape[0] != e.shape[0]:
            raise WslError(f"ProbeFusion: {z.shape[0]} networks in x but {e.shape[0]} rows of probe features")
        return self.fuse(torch.cat([z, e.to(z.dtype)], dim=1))  # type: ignore[no-any-return]

"""Late fusion of a weight-space meta-model with probe features (computed by :mod:`wsl.tasks.probes`).

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

**Learned probes** (``learn_inputs``, ``probes.learn`` in a config): the
probe inputs become parameters ``tanh(r)`` (initialized at the given
synthetic probes) and ``p = probe_summary(nets(tanh(r)))`` is computed inside
the forward pass by running the batch's networks on them, so the loss trains
the inputs too (Kahana et al. 2024, "probing"). ``Probed.probes`` is then the
batch's networks -- any callable ``probes -> (N, P, C)`` logits, such as a
:class:`~wsl.tasks.probes.ProbeBatch` -- not a feature tensor.

**Stored probes** (``stored_inputs``): probe inputs that cannot be redrawn
from a seed -- those inverted from a zoo's training networks
(:mod:`wsl.tasks.inversion`) -- are kept in the buffer ``probe_x``, so a
saved model carries the inputs its probe features must be computed on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from wsl.errors import WslError

__all__ = ["ProbeFusion", "Probed", "probe_summary"]


@dataclass
class Probed:
    """A meta-model input ``x`` and the probe features ``(N, F)`` of the same networks, in the same order."""

    x: Any
    probes: Any  #: (N, F) probe features, or the networks as a callable probes -> logits (learned probes)


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
                 out_dim: int = 1, learn_inputs: torch.Tensor | None = None,
                 stored_inputs: Sequence[int] | None = None) -> None:
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
        self.raw_probes: nn.Parameter | None = None
        if learn_inputs is not None:
            self.raw_probes = nn.Parameter(torch.atanh(learn_inputs.detach().float().clamp(-0.95, 0.95)))
        self.register_buffer("probe_x", None if stored_inputs is None or learn_inputs is not None
                             else torch.zeros([int(s) for s in stored_inputs]))

    @torch.no_grad()
    def set_probe_inputs(self, x: torch.Tensor) -> None:
        """Set the probe inputs this model keeps: the start of learned probes, or the stored ``probe_x``
        (a no-op for fixed probes that are redrawn from their seed)."""
        own = self.raw_probes if self.raw_probes is not None else self.probe_x
        if own is None:
            return
        if tuple(x.shape) != tuple(own.shape):
            raise WslError(f"ProbeFusion: probe inputs of shape {tuple(x.shape)}, this model keeps {tuple(own.shape)}")
        x = x.to(own.device, own.dtype)
        own.copy_(torch.atanh(x.clamp(-0.95, 0.95)) if own is self.raw_probes else x)

    def probe_inputs(self) -> torch.Tensor:
        """The current (learned) probe inputs ``tanh(r)`` in ``[-1, 1]``."""
        if self.raw_probes is None:
            raise WslError("ProbeFusion: this model uses fixed probe features, it has no probe inputs")
        return torch.tanh(self.raw_probes)

    def features(self, p: Any) -> torch.Tensor:
        """Probe features ``(N, F)``: given (fixed probes), or computed by running the networks ``p`` -- a callable
        ``probes -> (N, P, C)`` logits such as a :class:`~wsl.tasks.probes.ProbeBatch` -- on the probe inputs."""
        if callable(p):
            if self.raw_probes is None:
                raise WslError("ProbeFusion: got networks to probe, but this model reads fixed probe features")
            return probe_summary(p(self.probe_inputs()))
        if self.raw_probes is not None:
            raise WslError("ProbeFusion: this model learns its probe inputs and needs the networks "
                           "(e.g. a ProbeBatch), not precomputed probe features")
        return p  # type: ignore[no-any-return]

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
        p = self.features(inp.probes).to(self.mu.device, self.mu.dtype)
        if p.dim() != 2 or p.shape[1] != self.num_features:
            raise WslError(f"ProbeFusion: probe features must be (N, {self.num_features}), got {tuple(p.shape)}")
        z = self.inner(inp.x)
        e = self.probe_net((p - self.mu) / self.sigma)
        if z.shape[0] != e.shape[0]:
            raise WslError(f"ProbeFusion: {z.shape[0]} networks in x but {e.shape[0]} rows of probe features")
        return self.fuse(torch.cat([z, e.to(z.dtype)], dim=1))  # type: ignore[no-any-return]


def probe_summary(logits: torch.Tensor, clip: float = 30.0) -> torch.Tensor:
    """``(N, P, C)`` probe logits -> ``(N, P * C + 2)`` head features: log-softmax per probe (clipped at
    ``-clip``), the log of the mean logit scale, and the fraction of probes given the most frequent class."""
    n, p, c = logits.shape
    logp = torch.log_softmax(logits, -1).clamp(min=-clip)
    scale = torch.log(logits.std(-1).mean(-1, keepdim=True) + 1e-6)
    top = logits.argmax(-1)
    counts = torch.zeros(n, c, device=logits.device).scatter_add_(1, top, torch.ones_like(top, dtype=torch.float32))
    agree = counts.max(1, keepdim=True).values / p
    return torch.cat([logp.reshape(n, -1), scale, agree], 1)

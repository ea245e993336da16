"""Learned unit grids: a continuous, per-group feature of a unit's position (optional NeuMeta input).

Group ``g`` of the base network has ``n_g`` units at positions ``u_j = j / (n_g - 1)``.
The grid holds one learned vector ``G_g[j]`` per base unit and returns, for any
position ``u`` in ``[0, 1]``, the linear interpolation between its two neighbours::

    t = u (n_g - 1),  j = min(floor(t), n_g - 2),  a = t - j
    phi_g(u) = (1 - a) G_g[j] + a G_g[j + 1]                (phi_g(u) = G_g[0] when n_g = 1)

so every width samples the same piecewise-linear continuum, and at the base's own
positions the feature is that unit's vector. A smooth coordinate MLP on Fourier
features alone produces weight matrices of low rank at initialisation (measured
on the digits ResNet: effective rank 7.5 of 64 for the last 3x3 convs, 1.3-1.6 for
the 1x1 convs and the classifier).
NeuMeta feeds ``phi(u_out)``, ``phi(u_in)`` and their product: an MLP whose input is
a sum of an output-unit and an input-unit feature starts nearly additive,
``W(o, i) ~ f(o) + g(i)`` (rank about 2 after centring, measured), while the
product term makes ``W(o, i) ~ sum_d c_d a_d(o) b_d(i)``, of rank up to ``dim``.
Missing axes (a bias has no input unit) get a zero vector.
"""

from __future__ import annotations

import torch
from torch import nn


class UnitGrid(nn.Module):
    """Per-group learned vectors at the base units' positions, linearly interpolated in ``u``.

    ``sizes[g]`` is the base size of group ``g``; ``dim`` the feature size; ``init_std`` the
    standard deviation of the random initial vectors.
    """

    def __init__(self, sizes: list[int], dim: int, init_std: float = 1.0) -> None:
        super().__init__()
        self.dim = dim
        sizes_t = torch.tensor([int(n) for n in sizes], dtype=torch.long)
        self.register_buffer("sizes", sizes_t, persistent=False)
        self.register_buffer("offsets", torch.cat([torch.zeros(1, dtype=torch.long), sizes_t.cumsum(0)[:-1]]),
                             persistent=False)
        self.table = nn.Parameter(torch.randn(int(sizes_t.sum()), dim) * init_std)

    def forward(self, group: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """``(R, dim)`` features for rows in ``group`` (``-1``: no axis, zeros) at positions ``u``."""
        present = group >= 0
        g = group.clamp_min(0)
        n = self.sizes[g]
        t = u.clamp(0.0, 1.0) * (n - 1).clamp_min(0).to(u.dtype)
        j = torch.minimum(t.floor().long(), (n - 2).clamp_min(0))
        a = (t - j.to(t.dtype)).unsqueeze(1)
        lo = self.offsets[g] + j
        hi = lo + (n > 1).long()
        out = (1 - a) * self.table[lo] + a * self.table[hi]
        return out * present.unsqueeze(1).to(out.dtype)

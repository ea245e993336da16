"""Interpolation targets: the base network read at a narrower member's unit positions.

A width-family member at ratio ``r`` places its ``n`` units of group ``g`` at
``u_j = j / (n - 1)``; the base has ``n_0`` units at ``v_i = i / (n_0 - 1)``.
The interpolation target of a coordinate row ``(k, u_out, u_in)`` is the
bilinear interpolation of the base tensor ``k`` between its four neighbouring
base rows::

    s = u_out (n0_out - 1),  a = floor(s) (at most n0_out - 2),  alpha = s - a   (same for u_in: b, beta)
    T(k, u_out, u_in) = (1-alpha)(1-beta) W0[a, b] + alpha(1-beta) W0[a+1, b]
                        + (1-alpha) beta W0[a, b+1] + alpha beta W0[a+1, b+1]

(a missing axis or a group of one unit contributes a single row). With fan-in
scaling the weight rows are divided by ``w_in`` like the generated ones. At the
base's own positions the target is the base itself, so at full width this is the
ordinary reconstruction target; at a narrow width it is what a generator that is
piecewise linear between the base units would produce.

Measured on the smoothed digits ResNet (width 8, BatchNorm recomputed): the
interpolated base alone scores 0.697 / 0.589 / 0.256 test accuracy at 7 / 6 / 4
of 8 channels, where an unregularised NeuMeta fit stays at chance. Used by
``HyperTrainConfig.interp_weight``.
"""

from __future__ import annotations

import torch

from wsl.hyper.coords import NetCoords


def interpolation_index(coords: NetCoords, cont: torch.Tensor, base: NetCoords) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows (R, 4), weights (R, 4))``: the four base rows and bilinear weights of each row of ``coords``.

    ``cont`` is the (possibly jittered) continuous part of ``coords``; ``base`` the
    full-width coordinates (same tensors, in the same order).
    """
    n = cont.shape[0]
    n0_out = torch.ones(n, dtype=torch.long)
    n0_in = torch.ones(n, dtype=torch.long)
    start = torch.zeros(n, dtype=torch.long)
    for k, (lay, lay0) in enumerate(zip(coords.layouts, base.layouts)):
        a, b = coords.offsets[k], coords.offsets[k + 1]
        start[a:b] = base.offsets[k]
        if lay0.out_group is not None:
            n0_out[a:b] = lay0.shape[0]
        if lay0.in_group is not None:
            n0_in[a:b] = lay0.shape[1]

    def axis(u: torch.Tensor, n0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = u.clamp(0.0, 1.0) * (n0 - 1).to(u.dtype)
        lo = torch.minimum(s.floor().long(), (n0 - 2).clamp_min(0))
        frac = torch.where(n0 > 1, s - lo.to(s.dtype), torch.zeros_like(s))
        hi = lo + (n0 > 1).long()
        return lo, hi, frac

    cont = cont.detach().cpu()
    ao, bo, fo = axis(cont[:, 0], n0_out)
    ai, bi, fi = axis(cont[:, 1], n0_in)
    rows = torch.stack([start + ao * n0_in + ai, start + bo * n0_in + ai,
                        start + ao * n0_in + bi, start + bo * n0_in + bi], dim=1)
    weights = torch.stack([(1 - fo) * (1 - fi), fo * (1 - fi), (1 - fo) * fi, fo * fi], dim=1)
    return rows, weights


def interpolation_target(coords: NetCoords, cont: torch.Tensor, base: NetCoords,
                         base_rows: torch.Tensor) -> torch.Tensor:
    """``(R, taps_max)`` bilinear interpolation of ``base_rows`` (full-width rows) at ``cont``'s positions."""
    rows, weights = interpolation_index(coords, cont, base)
    rows, weights = rows.to(base_rows.device), weights.to(base_rows)
    return (base_rows[rows] * weights.unsqueeze(2)).sum(1)

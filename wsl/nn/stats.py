"""StatNN statistics (Unterthiner et al. 2020): mean, std and five percentiles of each row of values.

Permuting hidden units only reorders a tensor's values, so these statistics
are invariant to every weight-space symmetry. The dense meta-models feed them
to their head (``stats=True``, :mod:`wsl.nn.dense_models`); the StatNN
features (:mod:`wsl.tasks.statnn`) are built from them.
"""

from __future__ import annotations

import torch

__all__ = ["QUANTILES", "STAT_NAMES", "tensor_stats"]

QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
STAT_NAMES = ("mean", "std", "q0", "q25", "q50", "q75", "q100")
"""The columns of :func:`tensor_stats`."""


def tensor_stats(values: torch.Tensor) -> torch.Tensor:
    """``(N, M)`` values -> ``(N, 7)`` statistics (mean, std, 5 percentiles); ``M = 0`` gives zeros."""
    n, m = values.shape
    if m == 0:
        return torch.zeros(n, 7, dtype=torch.float64, device=values.device)
    v = values.to(torch.float64)
    mean = v.mean(1)
    std = v.std(1, correction=0)
    srt = v.sort(dim=1).values
    pos = torch.tensor(QUANTILES, dtype=torch.float64, device=v.device) * (m - 1)
    lo, hi = pos.floor().long(), pos.ceil().long()
    frac = pos - lo
    q = srt[:, lo] * (1 - frac) + srt[:, hi] * frac
    return torch.cat([mean[:, None], std[:, None], q], dim=1)

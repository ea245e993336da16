"""Null models for a zoo's spectra: what the curves look like when nothing is shared.

Three nulls sit beside every spectrum in a report:

* ``init`` -- the same architecture at initialisation: N networks drawn by
  the recipe's own initialisation (a zoo's epoch-0 rows, which the generator
  wrote with the same code path as the trained rows) or, for checkpoints
  without a recipe, by the architecture's default initialisation with N
  seeds. Built by the caller (:mod:`wsl.subspace.sources`) as a stack.
* ``mp`` -- the Marchenko-Pastur law: the expected spectrum of a centred
  ``N x P`` matrix of independent entries with the data's per-entry variance.
  With ``m = min(N - 1, P)`` non-zero eigenvalues, ``M = max(N - 1, P)`` and
  ``c = m / M``, the eigenvalues of ``Xc Xc^T / M`` follow the MP density
  with ratio ``c`` and scale ``sigma^2`` on ``[sigma^2 (1 - sqrt c)^2,
  sigma^2 (1 + sqrt c)^2]``; :func:`mp_spectrum` places the m eigenvalues at
  the density's quantiles ``(m - i + 1/2) / m``. Its explained-variance curve
  depends on the shape only.
* ``shuffled`` -- :class:`wsl.subspace.stacks.ShuffledStack`: every model's
  entries permuted independently, keeping each model's value distribution.
"""

from __future__ import annotations

import math

import torch

from wsl.subspace.spectrum import Spectrum

__all__ = ["NULLS", "mp_cdf", "mp_quantiles", "mp_spectrum"]

NULLS = ("init", "mp", "shuffled")
"""The nulls a report shows, in order."""


def _mp_density(x: torch.Tensor, c: float) -> torch.Tensor:
    lo, hi = (1 - math.sqrt(c)) ** 2, (1 + math.sqrt(c)) ** 2
    inside = (x > lo) & (x < hi)
    d = torch.zeros_like(x)
    xi = x[inside]
    d[inside] = torch.sqrt((hi - xi) * (xi - lo)) / (2 * math.pi * c * xi)
    return d


def mp_cdf(x: torch.Tensor, c: float, grid: int = 200_001) -> torch.Tensor:
    """CDF of the Marchenko-Pastur law with ratio ``0 < c <= 1`` and unit scale, at ``x`` (numerical)."""
    lo, hi = (1 - math.sqrt(c)) ** 2, (1 + math.sqrt(c)) ** 2
    # substitute x = lo + (hi - lo) sin^2(t): the square-root edges become smooth and the trapezoid rule exact enough
    t = torch.linspace(0, math.pi / 2, grid, dtype=torch.float64)
    xs = lo + (hi - lo) * torch.sin(t) ** 2
    dens = _mp_density(xs, c) * (hi - lo) * torch.sin(2 * t)
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum((dens[1:] + dens[:-1]) / 2 * (t[1] - t[0]), 0)])
    cum = cum / cum[-1]
    idx = torch.searchsorted(xs, x.to(torch.float64).clamp(lo, hi)).clamp(1, grid - 1)
    x0, x1 = xs[idx - 1], xs[idx]
    w = ((x.to(torch.float64).clamp(lo, hi) - x0) / (x1 - x0).clamp_min(1e-300)).clamp(0, 1)
    return cum[idx - 1] + w * (cum[idx] - cum[idx - 1])


def mp_quantiles(m: int, c: float, grid: int = 200_001) -> torch.Tensor:
    """The m unit-scale MP eigenvalues at quantiles ``(m - i + 1/2) / m``, ``i = 1..m`` (largest first)."""
    if m <= 0:
        return torch.zeros(0, dtype=torch.float64)
    c = min(max(float(c), 1e-12), 1.0)
    lo, hi = (1 - math.sqrt(c)) ** 2, (1 + math.sqrt(c)) ** 2
    xs = lo + (hi - lo) * torch.sin(torch.linspace(0, math.pi / 2, grid, dtype=torch.float64)) ** 2
    cdf = mp_cdf(xs, c, grid)
    q = (torch.arange(m, 0, -1, dtype=torch.float64) - 0.5) / m
    idx = torch.searchsorted(cdf, q).clamp(1, grid - 1)
    c0, c1 = cdf[idx - 1], cdf[idx]
    w = ((q - c0) / (c1 - c0).clamp_min(1e-300)).clamp(0, 1)
    return xs[idx - 1] + w * (xs[idx] - xs[idx - 1])


def mp_spectrum(data: Spectrum) -> Spectrum:
    """The Marchenko-Pastur null matched to ``data``'s shape (N models, P entries) and per-entry variance."""
    n, p = data.n_models - 1, data.n_params
    m, big = min(n, p), max(n, p)
    sigma2 = float(data.eigenvalues.sum()) / max(n * p, 1)
    lam = mp_quantiles(m, m / big if big else 1.0) * sigma2 * big
    return Spectrum(data.name, data.shape, data.n_models, lam, extra={"sigma2": sigma2})

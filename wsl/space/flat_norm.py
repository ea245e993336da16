"""Normalization over a flattened axis: one unit factor among fixed positions.

Swin's patch merging concatenates the channels of 2x2 neighbouring tokens
(``reshape(.., 2, 2, C).flatten``) and normalizes the ``4C`` result: the
axis is the row-major product of factors ``(None, 2), (None, 2), (g, C)``.

A layer norm over an axis (and an RMS norm, and a batch norm whose
statistics are per entry) is equivariant under *any* permutation ``P`` of
that axis, provided its affine parameters move with it::

    LN(P x; P w, P b) = (P x - mean(x)) / std(x) * P w + P b = P LN(x; w, b)

because the mean and the variance are sums over the whole axis. The
permutation a unit group induces on such an axis moves the ``C`` units the
same way inside every fixed position (blocks stay in place), so it is one of
those ``P``: the parameters get the same factors as the input axis, and the
output keeps them. Only one unit factor is accepted (a parameter graph gives
it one node per unit, the fixed positions as that node's values);
interleaved pieces of a group are refused.
"""

from __future__ import annotations

from wsl.errors import UnsupportedLayerError


def flat_norm_factors(fac: tuple, path: str, kind: str, what: str) -> tuple:
    """``fac`` if it is one plain unit factor among fixed factors; refuses anything else by name."""
    units = [f for f in fac if f[0] is not None]
    if len(units) != 1 or any(len(f) != 2 for f in fac):
        raise UnsupportedLayerError(path, kind, f"{what} over a flattened axis with {len(units)} unit factors "
                                    "(one unit factor among fixed positions is supported)")
    return tuple(fac)

"""HNP layers: equivariant to exactly the network's hidden-unit permutations.

The "HNP" layer of Zhou et al. (2023) shares weights only across units of
*permutable* groups. Here every block axis indexed by a fixed group (network
input or output units, token positions, ...) is folded into the channels:
a block ``(N, F_b * c, *units)`` becomes ``(N, *permutable_units, P_b * F_b * c)``
with ``P_b`` the product of its fixed axis sizes, and the NP update of
:mod:`wsl.nn.np` is applied to these reduced blocks::

    Y_b = beta_b + sum_{A subset of perm_axes(b)} Broadcast( [ W_S concat_{(b', A'): groups(A') = S} P_{A'}(X_b') ]_{(b, A)} )

where ``P_A`` now means over the *permutable* axes not in ``A`` only. A block
whose axes are all fixed (e.g. the output layer's bias) becomes one vector
per model: it feeds and receives only the global term.

NP vs HNP
---------
* NP (:class:`~wsl.nn.np.NPLinear`) is equivariant to permutations of all
  groups, input/output included; weights are shared across input and output
  positions and symmetry is broken by an :class:`~wsl.nn.np.IOEmbedding`.
  Few parameters, independent of the number of inputs/outputs.
* HNP (:class:`HNPLinear`) is equivariant to exactly the network's symmetry:
  every input/output position has its own weights (the folded channels are
  mixed by full matrices), so no positional embedding is needed. Parameters
  grow with the (squared) number of input and output units.

Groups that are fixed but nested in a permutable parent move with the parent;
they are kept (shared) rather than folded, which keeps equivariance.
"""

from __future__ import annotations

from typing import Sequence

from wsl.nn.np import EquivariantLinear
from wsl.nn.pooling import truly_fixed
from wsl.space.weightspace import WeightSpace

__all__ = ["HNPLinear"]


class HNPLinear(EquivariantLinear):
    """HNP layer: shares weights across permutable units only (see module docstring).

    ``HNPLinear(space, in_channels, out_channels, activation=None)``; block
    ``b`` has ``F_b * in_channels`` input and ``F_b * out_channels`` output
    channels in :class:`~wsl.graph.WeightSpaceFeatures` layout. ``activation``
    is fused and applied in place.
    """

    def __init__(self, space: WeightSpace | Sequence[WeightSpace], in_channels: int, out_channels: int,
                 activation: str | None = None) -> None:
        super().__init__(space, in_channels, out_channels, fold=truly_fixed, activation=activation)

"""Permutation-invariant pooling of dense weight-space features.

* :class:`NPPool` -- every block averaged over *all* its unit axes:
  ``z = concat_b mean_{units}(X_b)`` of width ``sum_b F_b * c``. Invariant to
  permutations of every group (fixed ones included); pair it with
  :class:`~wsl.nn.np.IOEmbedding` so input/output positions still matter.
* :class:`HNPPool` -- every block averaged over its *permutable* axes only;
  axes of fixed groups (input/output units) are kept and flattened:
  ``z = concat_b flatten(mean_{permutable units}(X_b))`` of width
  ``sum_b F_b * c * prod(fixed sizes of b)``. Invariant to exactly the
  network's symmetry.

Both map :class:`~wsl.graph.WeightSpaceFeatures` ``(N, F_b * c, *units)`` to
``(N, out_features)``; the per-block order is :func:`wsl.graph.features.feature_blocks`
order, and within a block the flattening is channel-major.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from wsl.graph.features import WeightSpaceFeatures, feature_blocks
from wsl.nn.np import check_features, resolve_space, truly_fixed
from wsl.space.weightspace import WeightSpace

__all__ = ["NPPool", "HNPPool", "InvariantPool"]


class InvariantPool(nn.Module):
    """Mean over the axes whose group ``pooled(space, gid)`` accepts; the rest are flattened."""

    def __init__(self, space: WeightSpace | Sequence[WeightSpace], channels: int,
                 pooled: Callable[[WeightSpace, int], bool]) -> None:
        super().__init__()
        self.space = resolve_space(space)
        self.channels = int(channels)
        self._plan: list[tuple[tuple[str, tuple[int, ...]], tuple[int, ...]]] = []
        width = 0
        for key, b in feature_blocks(self.space):
            dims = tuple(2 + a for a, g in enumerate(b.unit_groups) if pooled(self.space, g))
            self._plan.append((key, dims))
            width += b.feature_size * self.channels * math.prod(
                s for a, s in enumerate(b.unit_shape) if 2 + a not in dims)
        self.out_features = width

    def forward(self, x: WeightSpaceFeatures) -> torch.Tensor:
        x = check_features(x, self.space, self.channels, type(self).__name__)
        outs = []
        for key, dims in self._plan:
            t = x.blocks[key]
            # sum * (1/n) rather than mean: its backward is a broadcast view, not a full-size copy
            n = math.prod(t.shape[d] for d in dims)
            outs.append((t.sum(dims) * (1.0 / n) if dims else t).flatten(1))
        return torch.cat(outs, dim=1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, out_features={self.out_features}"


class NPPool(InvariantPool):
    """``NPPool(space, channels)``: mean over every unit axis of every block (see module docstring)."""

    def __init__(self, space: WeightSpace | Sequence[WeightSpace], channels: int) -> None:
        super().__init__(space, channels, pooled=lambda s, g: True)


class HNPPool(InvariantPool):
    """``HNPPool(space, channels)``: mean over permutable unit axes, fixed axes kept (see module docstring)."""

    def __init__(self, space: WeightSpace | Sequence[WeightSpace], channels: int) -> None:
        super().__init__(space, channels, pooled=lambda s, g: not truly_fixed(s, g))

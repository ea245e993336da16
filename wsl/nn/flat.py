"""A non-equivariant baseline: an MLP on the concatenated, flattened weights.

``FlatMLPNet(space, out_features=1, *, in_channels=1, hidden=(256, 256),
activation="relu", dropout=0.0, standardize=True)`` reads every feature block
of :class:`~wsl.graph.WeightSpaceFeatures`, flattens it and concatenates::

    z = [vec(B_1), ..., vec(B_m), extras]          (N, D)
    y = MLP(BN(z))                                   (BatchNorm1d without affine when standardize)

It is *not* invariant to hidden-unit permutations: two orderings of one
network give different inputs. That is the point of the baseline -- it
measures what unit order costs a model that does not know the symmetry,
and what aligning a zoo (``wsl zoo align``) gives back.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from wsl.graph.features import WeightSpaceFeatures, feature_blocks
from wsl.nn.dense_models import mlp_head
from wsl.nn.pooling import MetaModelError, resolve_space
from wsl.space.weightspace import WeightSpace

__all__ = ["FlatMLPNet"]


class FlatMLPNet(nn.Module):
    """MLP on flattened weights (see the module docstring)."""

    def __init__(self, space: WeightSpace | Sequence[WeightSpace], out_features: int = 1, *, in_channels: int = 1,
                 hidden: Sequence[int] = (256, 256), activation: str = "relu", dropout: float = 0.0,
                 standardize: bool = True) -> None:
        super().__init__()
        self.space = resolve_space(space)
        self.in_channels = int(in_channels)
        shapes = {t.name: t.shape for t in self.space.spec.tensors}
        stored = {name for (name, _), _ in feature_blocks(self.space)}  # the blocks partition each tensor
        width = self.in_channels * sum(int(torch.Size(shapes[n]).numel()) for n in stored)
        width += sum(int(torch.Size(shapes[n]).numel()) for n in self.space.spec.extras if n in shapes)
        if width == 0:
            raise MetaModelError("FlatMLPNet: the weight space has no entries")
        self.width = width
        self.norm = nn.BatchNorm1d(width, affine=False) if standardize else nn.Identity()
        self.head = mlp_head(width, hidden, out_features, activation, dropout)

    def _flat(self, x: Any) -> torch.Tensor:
        if isinstance(x, Mapping):
            x = WeightSpaceFeatures.from_state_dicts(self.space, x)
        if not isinstance(x, WeightSpaceFeatures):
            raise MetaModelError(f"FlatMLPNet: expected WeightSpaceFeatures or a stacked state_dict, got "
                                 f"{type(x).__name__}")
        ref = next(self.head.parameters())
        parts = [b.flatten(1) for b in x.blocks.values()] + [e.flatten(1) for e in x.extras.values()]
        z = torch.cat(parts, dim=1).to(device=ref.device, dtype=ref.dtype)
        if z.shape[1] != self.width:
            raise MetaModelError(f"FlatMLPNet: input has {z.shape[1]} entries, the model was built for {self.width}")
        return z

    def encode(self, x: Any) -> torch.Tensor:
        """The standardized flat input ``(N, D)``."""
        return self.norm(self._flat(x))  # type: ignore[no-any-return]

    def forward(self, x: Any) -> torch.Tensor:
        return self.head(self.encode(x))  # type: ignore[no-any-return]

"""A small CNN on rendered INRs: the "render, then classify" reference of INR classification.

``RenderCNN(shape, out_features=10, channels=(16, 32), hidden=64, dropout=0.0)``
reads renders ``(N, *shape)`` (a 1-D signal or a 2-D image per INR) and applies,
per entry of ``channels``, ``Conv(k=3, padding 1) -> ReLU -> MaxPool(2)`` (1-D or
2-D to match ``shape``), then ``flatten -> Linear(hidden) -> ReLU -> Linear(out)``.

It never looks at the weights: rendering is the INR's function on its input
grid, so this model measures what the *image* allows (an upper reference for
weight-space classifiers, which must read the same content from the weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from wsl.nn.pooling import MetaModelError

__all__ = ["RenderCNN"]


class RenderCNN(nn.Module):
    """See the module docstring."""

    def __init__(self, shape: Sequence[int], out_features: int = 10, channels: Sequence[int] = (16, 32),
                 hidden: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) not in (1, 2) or min(self.shape) < 1:
            raise MetaModelError(f"RenderCNN: renders must be 1-D or 2-D, got shape {self.shape}")
        if not channels or min(int(c) for c in channels) < 1:
            raise MetaModelError(f"RenderCNN: channels must list positive widths, got {channels!r}")
        conv = nn.Conv1d if len(self.shape) == 1 else nn.Conv2d
        pool = nn.MaxPool1d if len(self.shape) == 1 else nn.MaxPool2d
        layers: list[nn.Module] = []
        c_in, size = 1, list(self.shape)
        for c in channels:
            layers += [conv(c_in, int(c), 3, padding=1), nn.ReLU()]
            if min(size) >= 2:
                layers.append(pool(2))
                size = [s // 2 for s in size]
            c_in = int(c)
        self.features = nn.Sequential(*layers)
        flat = c_in * math.prod(size)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Renders ``(N, *shape)`` -> logits ``(N, out_features)``."""
        if tuple(x.shape[1:]) != self.shape:
            raise MetaModelError(f"RenderCNN: expected renders of shape {self.shape}, got {tuple(x.shape[1:])}")
        ref = next(self.parameters())
        return self.head(self.features(x.to(device=ref.device, dtype=ref.dtype).unsqueeze(1)))  # type: ignore[no-any-return]

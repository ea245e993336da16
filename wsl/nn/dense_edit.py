"""Weight-space *editing* networks: weights in, a weight update of the same space out.

Each network maps ``N`` networks of one architecture (dense
:class:`~wsl.graph.WeightSpaceFeatures`, ``c = in_channels``) to an update
``U`` of the same shape, returned as a stacked state_dict
``{name: (N, *shape)}`` (the caller scales and adds it: ``W' = W + r * U``):

* :class:`NPEditNet` -- ``IOEmbedding -> [NPLinear + act] x L -> NPLinear(-> c)``
* :class:`HNPEditNet` -- ``[HNPLinear + act] x L -> HNPLinear(-> c)``
* :class:`NFTEditNet` -- ``BlockLinear lift -> NFTLayer x L -> BlockLinear(-> c)``
* :class:`FlatMLPEdit` -- ``vec(W) -> MLP -> vec(U)`` (not equivariant: the baseline)

The last layer is the *equivariant head*: an equivariant linear map from the
hidden channels back to the input's channels, so for every permutation ``P``
of the hidden units ``U(P W) = P U(W)`` (NP/HNP/NFT; the test checks it to
float precision). It starts at zero, so an untrained network is the identity
edit ``W' = W``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from wsl.graph.features import WeightSpaceFeatures, feature_blocks
from wsl.nn.dense_models import DenseInput, mlp_head
from wsl.nn.hnp import HNPLinear
from wsl.nn.nft import BlockLinear, NFTLayer
from wsl.nn.np import IOEmbedding, NPLinear
from wsl.nn.pooling import MetaModelError, resolve_space
from wsl.space.weightspace import WeightSpace

__all__ = ["FlatMLPEdit", "HNPEditNet", "NFTEditNet", "NPEditNet"]

SpaceArg = WeightSpace | Sequence[WeightSpace]


def _zero(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.zero_()


class _EditNet(DenseInput):
    """Features (or a stacked state_dict) in, a stacked update state_dict out."""

    in_channels: int
    body: nn.Module

    def update_features(self, x: Any) -> WeightSpaceFeatures:
        """The update as features ``(N, F_b * in_channels, *units)`` per block."""
        return self.body(self._features(x))  # type: ignore[no-any-return]

    def forward(self, x: Any) -> dict[str, torch.Tensor]:
        """The update as a stacked state_dict ``{name: (N, *shape)}`` (extras, if any, are zero)."""
        u = self.update_features(x)
        sd = u.to_state_dicts()
        return {k: (torch.zeros_like(v) if k in self.space.spec.extras else v) for k, v in sd.items()}


def _widths(channels: Sequence[int] | int, where: str) -> list[int]:
    ch = [int(channels)] if isinstance(channels, int) else [int(c) for c in channels]
    if not ch or min(ch) < 1:
        raise MetaModelError(f"{where}: channels must list >= 1 positive widths, got {channels!r}")
    return ch


class NPEditNet(_EditNet):
    """NP editing network: ``NPEditNet(space, channels=(16, 16, 16), *, in_channels=1, activation="relu",
    io_embed=True, io_init_std=1.0)`` (see the module docstring)."""

    def __init__(self, space: SpaceArg, channels: Sequence[int] | int = (16, 16, 16), *, in_channels: int = 1,
                 activation: str = "relu", io_embed: bool = True, io_init_std: float = 1.0) -> None:
        super().__init__()
        self.space = resolve_space(space)
        self.in_channels = int(in_channels)
        ch = [self.in_channels] + _widths(channels, "NPEditNet")
        layers: list[nn.Module] = [IOEmbedding(self.space, self.in_channels, io_init_std)] if io_embed else []
        layers += [NPLinear(self.space, a, b, activation=activation) for a, b in zip(ch[:-1], ch[1:])]
        self.head = NPLinear(self.space, ch[-1], self.in_channels)
        _zero(self.head)
        self.body = nn.Sequential(*layers, self.head)


class HNPEditNet(_EditNet):
    """HNP editing network: ``HNPEditNet(space, channels=(16, 16, 16), *, in_channels=1, activation="relu")``."""

    def __init__(self, space: SpaceArg, channels: Sequence[int] | int = (16, 16, 16), *, in_channels: int = 1,
                 activation: str = "relu") -> None:
        super().__init__()
        self.space = resolve_space(space)
        self.in_channels = int(in_channels)
        ch = [self.in_channels] + _widths(channels, "HNPEditNet")
        layers: list[nn.Module] = [HNPLinear(self.space, a, b, activation=activation)
                                   for a, b in zip(ch[:-1], ch[1:])]
        self.head = HNPLinear(self.space, ch[-1], self.in_channels)
        _zero(self.head)
        self.body = nn.Sequential(*layers, self.head)


class NFTEditNet(_EditNet):
    """NFT editing network: ``NFTEditNet(space, channels=16, depth=2, heads=4, *, in_channels=1,
    token_dim=None, mlp_ratio=2.0, dropout=0.0)``: lift, ``depth`` NFT layers, per-block linear head."""

    def __init__(self, space: SpaceArg, channels: int = 16, depth: int = 2, heads: int = 4, *,
                 in_channels: int = 1, token_dim: int | None = None, mlp_ratio: float = 2.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.space = resolve_space(space)
        self.in_channels = int(in_channels)
        c = _widths(channels, "NFTEditNet")[0]
        if depth < 1:
            raise MetaModelError(f"NFTEditNet: depth must be >= 1, got {depth}")
        layers: list[nn.Module] = [BlockLinear(self.space, self.in_channels, c)]
        layers += [NFTLayer(self.space, c, heads, token_dim, mlp_ratio, dropout) for _ in range(depth)]
        self.head = BlockLinear(self.space, c, self.in_channels)
        _zero(self.head)
        self.body = nn.Sequential(*layers, self.head)


class FlatMLPEdit(_EditNet):
    """MLP on the flattened weights producing a flat update: ``FlatMLPEdit(space, *, in_channels=1,
    hidden=(256, 256), activation="relu", dropout=0.0)`` (not permutation-equivariant; last layer zero)."""

    def __init__(self, space: SpaceArg, *, in_channels: int = 1, hidden: Sequence[int] = (256, 256),
                 activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        self.space = resolve_space(space)
        self.in_channels = int(in_channels)
        self.keys = [k for k, _ in feature_blocks(self.space)]
        self.sizes: list[int] = []
        for _, b in feature_blocks(self.space):
            n = b.feature_size * self.in_channels
            for s in b.unit_shape:
                n *= int(s)
            self.sizes.append(n)
        width = sum(self.sizes)
        if width == 0:
            raise MetaModelError("FlatMLPEdit: the weight space has no entries")
        self.net = mlp_head(width, hidden, width, activation, dropout)
        _zero(self.net[-1])
        self.body = self.net

    def update_features(self, x: Any) -> WeightSpaceFeatures:
        feats = self._features(x)
        z = torch.cat([feats.blocks[k].flatten(1) for k in self.keys], dim=1)
        out = self.net(z).split(self.sizes, dim=1)
        blocks = {k: o.reshape(feats.blocks[k].shape) for k, o in zip(self.keys, out)}
        return WeightSpaceFeatures(self.space, blocks, feats.extras)

"""Invariant meta-models on dense weight-space features: NP, HNP and NFT networks.

Each model maps ``N`` networks of one architecture to ``(N, out_features)``
(e.g. predicted test accuracy), invariant to the architecture's hidden-unit
permutations:

* :class:`NPNet` -- ``IOEmbedding -> [NPLinear + act] x L -> NPPool -> MLP``
* :class:`HNPNet` -- ``[HNPLinear + act] x L -> HNPPool -> MLP``
* :class:`NFTNet` -- ``BlockLinear lift -> NFTLayer x L -> HNPPool -> MLP``

Inputs are :class:`~wsl.graph.WeightSpaceFeatures` (``c = in_channels``,
default 1 = raw weights) or a stacked state_dict (``{name: (N, *shape)}``),
converted with :meth:`WeightSpaceFeatures.from_state_dicts`; features are
moved to the model's device and dtype. Construct from a
:class:`~wsl.space.WeightSpace` or a list of spaces sharing one structure.
``encode(x)`` returns the pooled invariant embedding, ``forward(x)`` the head output.

``stats=True`` (every net) also feeds the head the StatNN statistics of each
input block -- mean, std and the 0/25/50/75/100 percentiles of its values
(:func:`wsl.nn.stats.tensor_stats`), batch-normalized. A permutation of
hidden units only reorders a block's values, so these statistics are
invariant and the network stays invariant: ``z = [pool(body(x)), BN(stats(x))]``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from wsl.graph.features import WeightSpaceFeatures, feature_blocks
from wsl.nn.hnp import HNPLinear
from wsl.nn.nft import BlockLinear, NFTLayer
from wsl.nn.np import IOEmbedding, NPLinear
from wsl.nn.pooling import HNPPool, MetaModelError, NPPool, activation_fn, resolve_space
from wsl.nn.stats import tensor_stats
from wsl.space.weightspace import WeightSpace

__all__ = ["NPNet", "HNPNet", "NFTNet", "mlp_head"]

SpaceArg = WeightSpace | Sequence[WeightSpace]


class _Act(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.fn = activation_fn(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def mlp_head(in_features: int, hidden: Sequence[int], out_features: int, activation: str = "relu",
             dropout: float = 0.0) -> nn.Sequential:
    """``Linear -> act -> Dropout`` per hidden width, then ``Linear(-> out_features)``."""
    layers: list[nn.Module] = []
    prev = in_features
    for h in hidden:
        layers += [nn.Linear(prev, int(h)), _Act(activation)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        prev = int(h)
    layers.append(nn.Linear(prev, out_features))
    return nn.Sequential(*layers)


class DenseInput(nn.Module):
    """Input handling shared by the dense meta-models and editing networks: features or a stacked state_dict."""

    space: WeightSpace

    def _features(self, x: Any) -> WeightSpaceFeatures:
        if isinstance(x, Mapping):
            x = WeightSpaceFeatures.from_state_dicts(self.space, x)
        if not isinstance(x, WeightSpaceFeatures):
            raise MetaModelError(f"{type(self).__name__}: expected WeightSpaceFeatures or a stacked state_dict, "
                                 f"got {type(x).__name__}")
        ref = next(self.parameters())
        first = next(iter(x.blocks.values()))
        if first.dtype != ref.dtype or first.device != ref.device:
            x = x.to(device=ref.device, dtype=ref.dtype)
        return x


class _DenseNet(DenseInput):
    """``encode`` / ``forward`` and the MLP head (input handling from :class:`DenseInput`)."""

    in_channels: int

    def _stats_width(self, enabled: bool) -> int:
        """Set up the optional statistics input of the head; returns its width (0 when off)."""
        n = 7 * len(feature_blocks(self.space)) if enabled else 0
        self.stats_norm = nn.BatchNorm1d(n) if enabled else None
        return n

    def encode(self, x: Any) -> torch.Tensor:
        """Invariant embedding ``(N, pool.out_features [+ 7 * blocks])`` (before the head)."""
        feats = self._features(x)
        z = self.pool(self.body(feats))
        if self.stats_norm is None:
            return z  # type: ignore[no-any-return]
        s = torch.cat([tensor_stats(b.flatten(1)) for b in feats.blocks.values()], dim=1).to(z.dtype)
        return torch.cat([z, self.stats_norm(s)], dim=1)

    def forward(self, x: Any) -> torch.Tensor:
        """Head output ``(N, out_features)``."""
        return self.head(self.encode(x))  # type: ignore[no-any-return]


def _widths(channels: Sequence[int] | int, where: str) -> list[int]:
    ch = [int(channels)] if isinstance(channels, int) else [int(c) for c in channels]
    if not ch or min(ch) < 1:
        raise MetaModelError(f"{where}: channels must list >= 1 positive widths, got {channels!r}")
    return ch


class NPNet(_DenseNet):
    """NP invariant network (Zhou et al. 2023 "NFN-NP").

    ``NPNet(space, out_features=1, channels=(16, 16, 16), *, in_channels=1,
    head_hidden=(256,), activation="relu", io_embed=True, io_init_std=1.0,
    head_dropout=0.0, stats=False)``: one :class:`~wsl.nn.np.NPLinear` (+ ``activation``)
    per entry of ``channels``; :class:`~wsl.nn.np.IOEmbedding` on the input
    (disable with ``io_embed=False`` for a network also invariant to
    input/output permutations); :class:`~wsl.nn.pooling.NPPool`; MLP head.
    """

    def __init__(self, space: SpaceArg, out_features: int = 1, channels: Sequence[int] | int = (16, 16, 16), *,
                 in_channels: int = 1, head_hidden: Sequence[int] = (256,), activation: str = "relu",
                 io_embed: bool = True, io_init_std: float = 1.0, head_dropout: float = 0.0,
                 stats: bool = False) -> None:
        super().__init__()
        self.space = resolve_space(space)
        self.in_channels = int(in_channels)
        ch = [self.in_channels] + _widths(channels, "NPNet")
        layers: list[nn.Module] = [IOEmbedding(self.space, self.in_channels, io_init_std)] if io_embed else []
        layers += [NPLinear(self.space, a, b, activation=activation) for a, b in zip(ch[:-1], ch[1:])]
        self.body = nn.Sequential(*layers)
        self.pool = NPPool(self.space, ch[-1])
        self.head = mlp_head(self.pool.out_features + self._stats_width(stats), head_hidden, out_features,
                             activation, head_dropout)


class HNPNet(_DenseNet):
    """HNP invariant network (Zhou et al. 2023 "NFN-HNP").

    ``HNPNet(space, out_features=1, channels=(16, 16, 16), *, in_channels=1,
    head_hidden=(256,), activation="relu", head_dropout=0.0, stats=False)``: one
    :class:`~wsl.nn.hnp.HNPLinear` (+ ``activation``) per entry of
    ``channels``, :class:`~wsl.nn.pooling.HNPPool`, MLP head.
    """

    def __init__(self, space: SpaceArg, out_features: int = 1, channels: Sequence[int] | int = (16, 16, 16), *,
                 in_channels: int = 1, head_hidden: Sequence[int] = (256,), activation: str = "relu",
                 head_dropout: float = 0.0, stats: bool = False) -> None:
        super().__init__()
        self.space = resolve_space(space)
        self.in_channels = int(in_channels)
        ch = [self.in_channels] + _widths(channels, "HNPNet")
        self.body = nn.Sequential(*[HNPLinear(self.space, a, b, activation=activation)
                                    for a, b in zip(ch[:-1], ch[1:])])
        self.pool = HNPPool(self.space, ch[-1])
        self.head = mlp_head(self.pool.out_features + self._stats_width(stats), head_hidden, out_features,
                             activation, head_dropout)


class NFTNet(_DenseNet):
    """NFT invariant network: lift, NFT layers, HNP pooling, MLP head.

    ``NFTNet(space, out_features=1, channels=16, depth=2, heads=4, *,
    in_channels=1, token_dim=None, mlp_ratio=2.0, head_hidden=(256,),
    activation="relu", dropout=0.0, head_dropout=0.0, stats=False)``: a per-block
    :class:`~wsl.nn.nft.BlockLinear` lifts ``in_channels`` to ``channels``,
    ``depth`` :class:`~wsl.nn.nft.NFTLayer` blocks follow, then
    :class:`~wsl.nn.pooling.HNPPool` and the MLP head (``activation`` is the
    head's nonlinearity; the NFT layers use GELU).
    """

    def __init__(self, space: SpaceArg, out_features: int = 1, channels: int = 16, depth: int = 2,
                 heads: int = 4, *, in_channels: int = 1, token_dim: int | None = None, mlp_ratio: float = 2.0,
                 head_hidden: Sequence[int] = (256,), activation: str = "relu", dropout: float = 0.0,
                 head_dropout: float = 0.0, stats: bool = False) -> None:
        super().__init__()
        self.space = resolve_space(space)
        self.in_channels = int(in_channels)
        c = _widths(channels, "NFTNet")[0]
        if depth < 1:
            raise MetaModelError(f"NFTNet: depth must be >= 1, got {depth}")
        layers: list[nn.Module] = [BlockLinear(self.space, self.in_channels, c)]
        layers += [NFTLayer(self.space, c, heads, token_dim, mlp_ratio, dropout) for _ in range(depth)]
        self.body = nn.Sequential(*layers)
        self.pool = HNPPool(self.space, c)
        self.head = mlp_head(self.pool.out_features + self._stats_width(stats), head_hidden, out_features,
                             activation, head_dropout)

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

This module also holds the utilities every dense meta-model shares: the
structure check for features (:func:`check_features`), spaces given as lists
(:func:`resolve_space`), which groups are really fixed (:func:`truly_fixed`),
elementwise nonlinearities, :func:`channel_linear` (per-entry channel mixing,
run as a oneDNN channels-last 1x1 convolution on CPU: about twice as fast as
BLAS ``mm`` for these tall-skinny shapes where measured) and :class:`MetaModelError`.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsl.errors import WslError
from wsl.graph.features import WeightSpaceFeatures, feature_blocks
from wsl.space.weightspace import WeightSpace

__all__ = [
    "NPPool", "HNPPool", "InvariantPool", "MetaModelError", "FeatureActivation", "activation_fn", "as_nchw",
    "channel_linear", "check_features", "from_nchw", "resolve_space", "structure", "truly_fixed", "use_onednn",
]


class MetaModelError(WslError):
    """A meta-model got inputs that do not fit it (architecture, channels, type)."""


# ----------------------------------------------------------------- helpers
def structure(space: WeightSpace) -> tuple[Any, ...]:
    """What a dense layer depends on: blocks (keys, groups, shapes) and groups."""
    def compute(sp: WeightSpace) -> tuple[Any, ...]:
        blocks = tuple((k, b.unit_groups, b.unit_shape, b.feature_size) for k, b in feature_blocks(sp))
        return blocks, tuple((g.size, g.fixed, g.parent) for g in sp.groups)

    return space.cached("nn.structure", compute)


def resolve_space(space: WeightSpace | Sequence[WeightSpace]) -> WeightSpace:
    """One space, or the first of several that must share one :func:`structure`."""
    if isinstance(space, WeightSpace):
        return space
    spaces = list(space) if isinstance(space, (list, tuple)) else []
    if not spaces or not all(isinstance(s, WeightSpace) for s in spaces):
        raise MetaModelError(f"expected a WeightSpace or a non-empty list of them, got {type(space).__name__}")
    ref = structure(spaces[0])
    for i, s in enumerate(spaces[1:], 1):
        if structure(s) != ref:
            raise MetaModelError(f"spaces[{i}] ({s.signature}) does not share the structure of spaces[0] "
                                 f"({spaces[0].signature}): dense meta-models need one architecture")
    return spaces[0]


def truly_fixed(space: WeightSpace, gid: int) -> bool:
    """A fixed group that no permutation moves (not nested in a permutable parent)."""
    g = space.groups[gid]
    return g.fixed and (g.parent is None or truly_fixed(space, g.parent))


def check_features(x: Any, space: WeightSpace, channels: int, where: str) -> WeightSpaceFeatures:
    """Raise :class:`MetaModelError` unless ``x`` fits ``space`` with ``channels`` channels."""
    if not isinstance(x, WeightSpaceFeatures):
        raise MetaModelError(f"{where}: expected WeightSpaceFeatures, got {type(x).__name__}")
    if x.space is not space and structure(x.space) != structure(space):
        raise MetaModelError(f"{where}: features of architecture {x.space.signature} do not fit the layer's "
                             f"architecture {space.signature}")
    for key, b in feature_blocks(space):
        t = x.blocks[key]
        want = (b.feature_size * channels, *b.unit_shape)
        if tuple(t.shape[1:]) != want:
            raise MetaModelError(f"{where}: block {key[0]}{list(key[1])} has shape {tuple(t.shape)}, expected "
                                 f"(N, {', '.join(map(str, want))}) ({channels} channel(s) x {b.feature_size})")
    return x


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


_ACTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "relu": torch.relu, "gelu": F.gelu, "tanh": torch.tanh, "silu": F.silu, "identity": _identity,
}


def activation_fn(name: str | None, inplace: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """Elementwise nonlinearity by name (``relu``, ``gelu``, ``tanh``, ``silu``, ``identity``/None)."""
    if name is None:
        return _ACTS["identity"]
    if name not in _ACTS:
        raise MetaModelError(f"unknown activation {name!r}; valid: {', '.join(sorted(_ACTS))}")
    if inplace and name == "relu":
        return torch.relu_
    return _ACTS[name]


class FeatureActivation(nn.Module):
    """Apply an elementwise nonlinearity to every block (permutation-equivariant)."""

    def __init__(self, name: str = "relu") -> None:
        super().__init__()
        self.name = name
        self.fn = activation_fn(name)

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        return x.map(self.fn)


def use_onednn(x: torch.Tensor) -> bool:
    """Run the big channel mixes as oneDNN 1x1 convolutions (CPU float32/bfloat16); else ``mm``."""
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def as_nchw(t: torch.Tensor) -> torch.Tensor:
    """``(N, *units, C)`` contiguous -> ``(N, C, prod(units), 1)`` channels-last view (and back)."""
    return t.reshape(t.shape[0], -1, 1, t.shape[-1]).permute(0, 3, 1, 2)


def from_nchw(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`as_nchw`: ``(N, C, prod(units), 1)`` -> ``shape`` (``(N, *units, C)``)."""
    return t.permute(0, 2, 3, 1).reshape(*shape)


def channel_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W^T + b`` over the last dim of ``(N, *units, C)``; a oneDNN 1x1 convolution on CPU when ``x`` has units."""
    if x.dim() < 3 or not use_onednn(x):
        return F.linear(x, weight, bias)
    y = F.conv2d(as_nchw(x.contiguous()), weight[:, :, None, None], bias)
    return from_nchw(y, (*x.shape[:-1], weight.shape[0]))


# ------------------------------------------------------------------ pooling
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

"""Dense weight-space features: the form NP/HNP (NFN-style) layers consume.

Every block of every stored tensor (key ``(name, part)``) becomes a tensor of
shape ``(N, C, *unit_shape)``: ``C = block.feature_size`` channels (the
non-unit factors -- conv kernel taps, flattened positions -- in row-major
order; ``C = 1`` for plain Linear weights and biases) followed by one axis per
unit axis of the block's canonical view, tagged with its group in
``groups[key]``. Extras (unit-free entries) are carried along unchanged;
aliases are rebuilt from their source. ``to_state_dicts`` is a bit-exact
inverse of ``from_state_dicts``.
"""

from __future__ import annotations

from typing import Callable, Iterator, Mapping

import torch

from wsl.errors import WslError
from wsl.space.axes import from_canonical, to_canonical
from wsl.space.spec import Block
from wsl.space.weightspace import WeightSpace

Key = tuple[str, tuple[int, ...]]

__all__ = ["WeightSpaceFeatures", "feature_blocks"]


class FeatureError(WslError):
    """Weight-space features that do not fit their space, or each other."""


def feature_blocks(space: WeightSpace) -> tuple[tuple[Key, Block], ...]:
    """Every block of every stored (non-extra, non-alias) tensor, cached per space."""
    def compute(sp: WeightSpace) -> tuple[tuple[Key, Block], ...]:
        skip = set(sp.spec.extras) | {a for a, _ in sp.spec.aliases}
        return tuple(((t.name, b.part), b) for t in sp.spec.tensors if t.name not in skip for b in t.blocks())

    return space.cached("graph.feature_blocks", compute)


class WeightSpaceFeatures:
    """Per-block dense features of ``N`` models (see module docstring).

    ``blocks[(name, part)]`` is ``(N, C, *unit_shape)``; ``groups[(name, part)]``
    the group id of each unit axis; ``extras`` the unit-free entries ``(N, ...)``.
    """

    def __init__(self, space: WeightSpace, blocks: Mapping[Key, torch.Tensor],
                 extras: Mapping[str, torch.Tensor] | None = None) -> None:
        self.space = space
        spec = dict(feature_blocks(space))
        missing = [k for k in spec if k not in blocks]
        unknown = [k for k in blocks if k not in spec]
        if missing or unknown:
            raise FeatureError(f"WeightSpaceFeatures: blocks missing {missing[:4]} / unknown {unknown[:4]} "
                               f"for architecture {space.signature}")
        self.blocks: dict[Key, torch.Tensor] = {k: blocks[k] for k in spec}
        self.groups: dict[Key, tuple[int, ...]] = {k: b.unit_groups for k, b in spec.items()}
        self.extras: dict[str, torch.Tensor] = dict(extras or {})

    # ------------------------------------------------------------- conversion
    @classmethod
    def from_state_dicts(cls, space: WeightSpace, stacked: Mapping[str, torch.Tensor]) -> "WeightSpaceFeatures":
        """Stacked state_dict (``(N, *shape)`` tensors) -> features."""
        space.check(stacked, batched=True, where="WeightSpaceFeatures.from_state_dicts")
        blocks = {key: to_canonical(stacked[key[0]], b).movedim(-1, 1).contiguous()
                  for key, b in feature_blocks(space)}
        return cls(space, blocks, {n: stacked[n] for n in space.spec.extras})

    @classmethod
    def from_state_dict(cls, space: WeightSpace, state_dict: Mapping[str, torch.Tensor]) -> "WeightSpaceFeatures":
        """One state_dict -> features with ``N = 1``."""
        return cls.from_state_dicts(space, {k: v.unsqueeze(0) for k, v in state_dict.items()})

    def to_state_dicts(self) -> dict[str, torch.Tensor]:
        """Features -> stacked state_dict (bit-exact inverse of :meth:`from_state_dicts`)."""
        n = self.num_models
        per_tensor: dict[str, list[tuple[Block, torch.Tensor]]] = {}
        for key, b in feature_blocks(self.space):
            per_tensor.setdefault(key[0], []).append((b, from_canonical(self.blocks[key].movedim(1, -1), b)))
        out: dict[str, torch.Tensor] = {}
        for name, parts in per_tensor.items():
            shape = self.space.tensors[name].shape
            if len(parts) == 1 and parts[0][0].shape == shape:
                out[name] = parts[0][1]
                continue
            ref = parts[0][1]
            full = torch.zeros((n, *shape), dtype=ref.dtype, device=ref.device)
            for b, val in parts:
                view = full
                for a, (s, e) in enumerate(b.slices):
                    view = view.narrow(a + 1, s, e - s)
                view.copy_(val)
            out[name] = full
        out.update(self.extras)
        for alias, src in self.space.spec.aliases:
            out[alias] = out[src]
        return {t.name: out[t.name] for t in self.space.spec.tensors}

    # ------------------------------------------------------------- symmetry
    def permute(self, perms: Mapping[int, torch.Tensor]) -> "WeightSpaceFeatures":
        """Apply group permutations (``{group: perm}``, ``(size,)`` or ``(N, size)``).

        Same convention as :meth:`WeightSpace.permute`: new unit ``i`` is old
        unit ``perm[i]``. ``from_state_dicts(space.permute(sd, p))`` equals
        ``from_state_dicts(sd).permute(p)``.
        """
        for g, p in perms.items():
            grp = self.space.groups[g]
            if grp.fixed or p.shape[-1] != grp.size:
                raise FeatureError(f"permute: group {self.space.group_name(g)} got a permutation of length "
                                   f"{p.shape[-1]} (fixed groups cannot be permuted)")
        out = {}
        for key, t in self.blocks.items():
            for ax, g in enumerate(self.groups[key]):
                p = perms.get(g)
                if p is None:
                    continue
                dim = ax + 2
                p = p.to(t.device)
                if p.dim() == 1:
                    t = t.index_select(dim, p)
                else:
                    shape = [1] * t.dim()
                    shape[0], shape[dim] = p.shape
                    t = torch.gather(t, dim, p.view(shape).expand_as(t))
            out[key] = t
        return WeightSpaceFeatures(self.space, out, self.extras)

    # ------------------------------------------------------------- utilities
    @property
    def num_models(self) -> int:
        return int(next(iter(self.blocks.values())).shape[0]) if self.blocks else 0

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "WeightSpaceFeatures":
        """Apply ``fn`` to every block tensor (extras unchanged)."""
        return WeightSpaceFeatures(self.space, {k: fn(t) for k, t in self.blocks.items()}, self.extras)

    def to(self, device: torch.device | str | torch.dtype | None = None,
           dtype: torch.dtype | None = None) -> "WeightSpaceFeatures":
        """Move every block and extra to ``device``; cast blocks (not extras) to ``dtype``.

        ``f.to(torch.float64)`` (a dtype as the first argument) casts only.
        """
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        return WeightSpaceFeatures(self.space, {k: t.to(device=device, dtype=dtype) for k, t in self.blocks.items()},
                                   {k: t.to(device=device) for k, t in self.extras.items()})

    def __add__(self, other: "WeightSpaceFeatures") -> "WeightSpaceFeatures":
        """Blockwise sum (extras: the left operand's)."""
        if not isinstance(other, WeightSpaceFeatures):
            return NotImplemented
        if other.space.signature != self.space.signature:
            raise FeatureError("cannot add features of different architectures "
                               f"({self.space.signature} vs {other.space.signature})")
        return WeightSpaceFeatures(self.space, {k: t + other.blocks[k] for k, t in self.blocks.items()}, self.extras)

    def __getitem__(self, key: Key) -> torch.Tensor:
        return self.blocks[key]

    def __iter__(self) -> Iterator[Key]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def keys(self) -> list[Key]:
        return list(self.blocks)

    def items(self) -> list[tuple[Key, torch.Tensor]]:
        return list(self.blocks.items())

    def __repr__(self) -> str:
        return f"WeightSpaceFeatures(N={self.num_models}, {len(self.blocks)} blocks, arch={self.space.signature})"

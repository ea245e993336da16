"""Edges of a parameter graph: which units a connection joins, and where its weights go.

Every tensor connection is a block of a stored tensor; its edges enumerate the
block's compact canonical view row-major (:func:`wsl.space.axes.to_compact`),
each edge carrying the block's ``F`` non-unit entries (kernel taps, flattened
positions). A :class:`CopyStep` records that placement once per block: edges
``start:stop`` of the graph, and their ``(stop - start) * F`` values at
``value_start`` of the *ragged* value vector (all real edge entries, edge after
edge). The *padded* form, ``edge_attr`` of shape ``(E, K)`` with every row
right-padded to the widest block ``K``, is derived from the same steps
(:func:`padded_gather`) only when asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from wsl.errors import WslError
from wsl.space.axes import canonical_flat_index
from wsl.space.diagonal import unit_indices
from wsl.space.spec import Block, TensorSpec

__all__ = ["CopyStep", "GraphLayoutError", "find_block", "identity_edges", "padded_gather", "tensor_edges"]


class GraphLayoutError(WslError):
    """A weight space cannot be laid out as a parameter graph (inconsistent spec)."""


@dataclass(frozen=True)
class CopyStep:
    """One tensor block's place in the graph: a strided copy of its canonical view.

    ``target`` is ``"x"`` (nodes ``start:stop``, column ``col``) or ``"edge"``
    (edges ``start:stop``, columns ``0:width``; ragged values from ``value_start``).
    """

    tensor: str
    block: Block
    target: str
    start: int
    stop: int
    col: int
    width: int
    value_start: int = 0

    @property
    def value_stop(self) -> int:
        return self.value_start + (self.stop - self.start) * self.width


def find_block(t: TensorSpec, part: tuple[int, ...]) -> Block:
    """The block of tensor ``t`` with index ``part`` (the only block if ``part`` is empty)."""
    for b in t.blocks():
        if not part or b.part == tuple(part):
            return b
    raise GraphLayoutError(f"tensor '{t.name}' has no block {part}")


def identity_edges(kind: str, ns: int, nd: int, heads: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(src_unit, dst_unit) of a parameter-free connection."""
    if ns != nd:
        raise GraphLayoutError(f"{where}: identity edges between sites of {ns} and {nd} units")
    if kind != "attn_kv":
        return torch.arange(nd), torch.arange(nd)
    if heads < 1 or nd % heads:
        raise GraphLayoutError(f"{where}: {nd} units cannot form {heads} heads")
    d = nd // heads
    base = torch.arange(heads).repeat_interleave(d * d) * d
    i = torch.arange(d).repeat_interleave(d).repeat(heads)
    j = torch.arange(d).repeat(d * heads)
    return base + i, base + j


def tensor_edges(blk: Block, sa: int, da: int, ns: int, nd: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(src_unit, dst_unit) per element of a block's canonical unit grid, row-major.

    A block with a diagonal axis (grouped conv) has edges only inside its
    blocks: one per stored weight, enumerated over the compact grid.
    """
    units = blk.unit_shape
    if blk.diagonal:
        if len(units) != 2 or {sa, da} != {0, 1} or units[sa] != ns or units[da] != nd:
            raise GraphLayoutError(f"{where}: block-diagonal block '{blk.tensor}' with units {units} does not "
                                   f"join sites of {ns} and {nd} units")
        coords = unit_indices(blk)
        return coords[sa], coords[da]
    if len(units) == 1 and sa == da == 0:
        if units[0] != ns or units[0] != nd:
            raise GraphLayoutError(f"{where}: one-to-one block of {units[0]} units joins sites of {ns} and {nd}")
        return torch.arange(ns), torch.arange(nd)
    if len(units) != 2 or {sa, da} != {0, 1}:
        raise GraphLayoutError(f"{where}: block '{blk.tensor}' has unit axes {units} with src_axis={sa}, "
                               f"dst_axis={da}; only (out, in) pairs and one-to-one blocks are supported")
    if units[sa] != ns or units[da] != nd:
        raise GraphLayoutError(f"{where}: block units {units} do not match site sizes src={ns}, dst={nd}")
    u0 = torch.arange(units[0]).repeat_interleave(units[1])
    u1 = torch.arange(units[1]).repeat(units[0])
    return (u0, u1) if sa == 0 else (u1, u0)


def padded_gather(num_edges: int, k: int, num_main: int, steps: tuple[CopyStep, ...],
                  identity_ranges: tuple[tuple[int, int], ...], offsets: Mapping[str, int],
                  shapes: Mapping[str, tuple[int, ...]]) -> torch.Tensor:
    """``(E, K)``: for every padded edge entry its position in ``[main, 0, 1]`` (see ``GraphLayout``).

    Entry ``num_main`` is the constant 0 (padding), ``num_main + 1`` the
    constant 1 (column 0 of an identity edge).
    """
    g = torch.full((num_edges, k), num_main, dtype=torch.long)
    for st in steps:
        if st.target == "edge":
            idx = canonical_flat_index(st.block, shapes[st.tensor]) + offsets[st.tensor]
            g[st.start:st.stop, :st.width] = idx.view(-1, st.width)
    for a, b in identity_ranges:
        g[a:b, 0] = num_main + 1
    return g

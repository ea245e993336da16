"""The parameter-graph layout of one architecture, computed once and cached.

A :class:`GraphLayout` turns a :class:`~wsl.space.WeightSpace` into index
tensors: node and edge attributes, the ``edge_index`` and *gather maps* from
the flat parameter vector of a model to its node features ``x`` and edge
features ``edge_attr``. Building graphs for any number of models is then a
single ``index_select`` (:mod:`wsl.graph.build`); decoding is its inverse
(:mod:`wsl.graph.decode`).

Nodes
    One node per unit of every site, sites in spec order, units in group
    order: node ``site_offsets[s] + u`` is unit ``u`` of site ``s``.
    ``x[:, j]`` holds node slot ``NODE_SLOTS[j]`` (bias, norm_scale,
    norm_shift, running_mean, running_var, scale); ``x_mask[:, j]`` tells
    whether the slot holds a parameter (absent slots are 0).
Edges
    Connections in spec order. A tensor connection enumerates the elements of
    its block's canonical view (:func:`wsl.space.axes.to_canonical`) in
    row-major order: edge ``e`` of a ``(out, in, F)`` block is ``(e // in,
    e % in)`` (a grouped conv's block uses its compact view ``(out, in/G, F)``:
    edge ``(o, j)`` joins input unit ``b(o) in/G + j`` to ``o``, see
    :mod:`wsl.space.diagonal`); its ``F`` non-unit entries (kernel taps ``kh*kw`` row-major,
    flattened positions) fill ``edge_attr[e, :F]``; columns ``F..K-1`` are 0
    with ``edge_mask`` False (``K`` = the widest block of the architecture,
    kernels are padded at the end, not centered). **Zero weights are edges.**
    Identity-like connections (``tensor is None``: residual, product,
    concat, attn_qk pair unit ``i`` with unit ``i``; attn_kv pairs every unit
    of head ``h`` with every unit of head ``h``) carry no parameter: their
    ``edge_attr`` is the constant ``1`` in column 0 (an identity weight) and
    their ``edge_mask`` row is all False.
Extras
    Entries without unit structure (``spec.extras``), followed by any scalar
    of a unit-structured tensor that has no node/edge slot, form a per-graph
    float64 ``extras`` vector. Aliases (tied weights) are not stored; decoding
    reproduces them from their source. Every state_dict scalar lands in
    exactly one slot: :meth:`GraphLayout.of` checks this bijection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from wsl.errors import WslError
from wsl.space.axes import canonical_flat_index
from wsl.space.diagonal import unit_indices
from wsl.space.spec import NODE_SLOTS, Block, TensorSpec
from wsl.space.weightspace import WeightSpace

#: Public node-kind codes (site kinds; ``output`` marks a sink site of a fixed group).
NODE_KINDS: dict[str, int] = {
    "input": 0, "neurons": 1, "hidden": 2, "add": 3, "product": 4, "concat": 5, "tokens": 6,
    "source": 7, "output": 8, "other": 9,
}
#: Public edge-kind codes (connection kinds), shared by every architecture.
EDGE_KINDS: dict[str, int] = {
    "linear": 0, "conv": 1, "depthwise_conv": 2, "embedding": 3, "param_add": 4, "param_mul": 5,
    "param_cat": 6, "residual": 7, "product": 8, "concat": 9, "attn_qk": 10, "attn_kv": 11, "other": 12,
}
NUM_SLOTS = len(NODE_SLOTS)


class GraphLayoutError(WslError):
    """A weight space cannot be laid out as a parameter graph (inconsistent spec)."""


@dataclass(frozen=True)
class CopyStep:
    """One tensor block's place in the graph: a strided copy of its canonical view.

    ``target`` is ``"x"`` (nodes ``start:stop``, column ``col``) or ``"edge"``
    (edges ``start:stop``, columns ``0:width``).
    """

    tensor: str
    block: Block
    target: str
    start: int
    stop: int
    col: int
    width: int


def find_block(t: TensorSpec, part: tuple[int, ...]) -> Block:
    """The block of tensor ``t`` with index ``part`` (the only block if ``part`` is empty)."""
    for b in t.blocks():
        if not part or b.part == tuple(part):
            return b
    raise GraphLayoutError(f"tensor '{t.name}' has no block {part}")


@dataclass
class GraphLayout:
    """Index tensors shared by every parameter graph of one architecture (see module doc).

    The *main* flat vector of a model is the concatenation of its stored
    parameter tensors ``main_names`` (spec order, row-major; offsets in
    ``main_offsets``). ``gather`` (length ``V*S + E*K``) indexes
    ``[main, 0, 1]``: entry ``num_main`` is the constant 0 (padding, absent
    slots) and ``num_main + 1`` the constant 1 (identity edges); its first
    ``V*S`` entries fill ``x`` row-major, the rest fill ``edge_attr``.
    ``node_real``/``node_src`` (and ``edge_*``) are the inverse for decoding:
    position in ``x.flatten()`` -> position in ``main``. ``leftover`` lists
    main positions with no slot (stored in ``extras`` after the
    ``extra_names`` entries). ``copy_steps`` describe the same placement as
    one strided copy per tensor block (the fast build path);
    ``identity_ranges`` the edge ranges of parameter-free connections.
    ``site_offsets``/``conn_offsets`` give the node/edge range of each site
    and connection.
    """

    signature: str
    num_nodes: int
    num_edges: int
    edge_dim: int
    site_offsets: torch.Tensor
    conn_offsets: torch.Tensor
    node_kind: torch.Tensor
    node_depth: torch.Tensor
    node_group: torch.Tensor
    node_pos: torch.Tensor
    edge_index: torch.Tensor
    edge_kind: torch.Tensor
    edge_conn: torch.Tensor
    x_mask: torch.Tensor
    edge_mask: torch.Tensor
    main_names: tuple[str, ...]
    main_offsets: tuple[int, ...]
    num_main: int
    extra_names: tuple[str, ...]
    extra_offsets: tuple[int, ...]
    leftover: torch.Tensor
    num_extras: int
    gather: torch.Tensor
    node_real: torch.Tensor
    node_src: torch.Tensor
    edge_real: torch.Tensor
    edge_src: torch.Tensor
    shapes: dict[str, tuple[int, ...]]
    aliases: tuple[tuple[str, str], ...]
    order: tuple[str, ...]
    copy_steps: tuple[CopyStep, ...] = ()
    identity_ranges: tuple[tuple[int, int], ...] = ()
    _device_cache: dict[Any, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)
    _structure_cache: dict[Any, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)

    @property
    def stored_names(self) -> tuple[str, ...]:
        """Tensors stored in a graph (main, then extras); aliases are derived."""
        return self.main_names + self.extra_names

    @staticmethod
    def of(space: WeightSpace) -> "GraphLayout":
        """The layout of ``space`` (computed once, cached on the space)."""
        return space.cached("graph.layout", _compute)

    def on(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Index tensors used by build/decode, moved to ``device`` (cached per device)."""
        key = str(device)
        if key not in self._device_cache:
            names = ("gather", "leftover", "node_real", "node_src", "edge_real", "edge_src", "edge_index",
                     "node_kind", "node_depth", "node_group", "node_pos", "edge_kind", "edge_conn",
                     "x_mask", "edge_mask")
            moved = {n: getattr(self, n).to(device) for n in names}
            vs = self.num_nodes * NUM_SLOTS
            moved["gather_x"], moved["gather_edge"] = moved["gather"][:vs], moved["gather"][vs:]
            self._device_cache[key] = moved
        return self._device_cache[key]

    def shared(self, key: Any, build: Callable[[], dict[str, torch.Tensor]], limit: int) -> dict[str, torch.Tensor]:
        """``build()``, kept per ``key`` with at most ``limit`` entries (oldest dropped); returns a shallow copy."""
        if key not in self._structure_cache:
            while len(self._structure_cache) >= limit:
                self._structure_cache.pop(next(iter(self._structure_cache)))
            self._structure_cache[key] = build()
        return dict(self._structure_cache[key])


def _compute(space: WeightSpace) -> GraphLayout:
    spec = space.spec
    groups, sites, conns = space.groups, space.sites, space.connections
    alias_names = {a for a, _ in spec.aliases}
    extra_set = set(spec.extras)
    main_names = tuple(t.name for t in spec.tensors if t.name not in alias_names and t.name not in extra_set)
    main_offsets = _offsets([space.tensors[n].numel for n in main_names])
    num_main = main_offsets[-1]
    off_of = dict(zip(main_names, main_offsets))
    zero, one = num_main, num_main + 1

    sizes = [groups[s.group].size for s in sites]
    site_off = _offsets(sizes)
    num_nodes = site_off[-1]
    outgoing = {c.src for c in conns}

    node_kind, node_pos = [], []
    for s, n in zip(sites, sizes):
        g = groups[s.group]
        kind = s.kind if s.kind in NODE_KINDS else "other"
        if g.fixed and s.id not in outgoing and s.kind not in ("input", "tokens", "source"):
            kind = "output"
        node_kind.append(torch.full((n,), NODE_KINDS[kind]))
        node_pos.append(torch.arange(n) if g.fixed else torch.full((n,), -1))
    site_t = torch.repeat_interleave(torch.arange(len(sites)), torch.tensor(sizes, dtype=torch.long))

    def main_index(tensor: str, part: tuple[int, ...], where: str) -> tuple[Block, torch.Tensor]:
        if tensor not in off_of:
            raise GraphLayoutError(f"{where}: tensor '{tensor}' is an extra or an alias, not a stored parameter")
        t = space.tensors[tensor]
        blk = find_block(t, part)
        return blk, canonical_flat_index(blk, t.shape) + off_of[tensor]

    # ---- nodes: one gather entry per (node, slot)
    node_gather = torch.full((num_nodes, NUM_SLOTS), zero, dtype=torch.long)
    steps: list[CopyStep] = []
    ident: list[tuple[int, int]] = []
    for p in spec.node_params:
        where = f"node param '{p.tensor}' ({p.slot}) of site {p.site}"
        blk, idx = main_index(p.tensor, p.part, where)
        grp = sites[p.site].group
        if blk.unit_groups != (grp,) or blk.feature_size != 1:
            raise GraphLayoutError(f"{where}: block units {blk.unit_groups}x{blk.feature_size} do not match "
                                   f"the site's group {grp}")
        node_gather[site_off[p.site]:site_off[p.site + 1], NODE_SLOTS.index(p.slot)] = idx
        steps.append(CopyStep(p.tensor, blk, "x", site_off[p.site], site_off[p.site + 1],
                              NODE_SLOTS.index(p.slot), 1))

    # ---- edges, one connection at a time (vectorized inside)
    widths = [find_block(space.tensors[c.tensor], c.part).feature_size for c in conns if c.tensor is not None]
    k = max(widths + [1])
    srcs, dsts, gathers, kinds, counts = [], [], [], [], []
    e0 = 0
    for ci, c in enumerate(conns):
        where = f"connection {ci} ({c.kind} '{c.module}')"
        ns, nd = sizes[c.src], sizes[c.dst]
        if c.tensor is None:
            su, du = _identity_edges(c.kind, ns, nd, int(c.attr("heads", 1)), where)
            g = torch.full((su.numel(), k), zero, dtype=torch.long)
            g[:, 0] = one
            ident.append((e0, e0 + su.numel()))
        else:
            blk, idx = main_index(c.tensor, c.part, where)
            su, du = _tensor_edges(blk, c.src_axis, c.dst_axis, ns, nd, where)
            f = blk.feature_size
            g = torch.full((su.numel(), k), zero, dtype=torch.long)
            g[:, :f] = idx.view(-1, f)
            steps.append(CopyStep(c.tensor, blk, "edge", e0, e0 + su.numel(), 0, f))
        srcs.append(su + site_off[c.src])
        dsts.append(du + site_off[c.dst])
        gathers.append(g)
        kinds.append(EDGE_KINDS.get(c.kind, EDGE_KINDS["other"]))
        counts.append(su.numel())
        e0 += su.numel()
    count_t = torch.tensor(counts, dtype=torch.long)
    edge_index = torch.stack([_cat(srcs), _cat(dsts)])
    edge_gather = torch.cat(gathers) if gathers else torch.zeros((0, k), dtype=torch.long)
    num_edges = int(edge_index.shape[1])
    expect = space.graph_size()
    if (num_nodes, num_edges) != tuple(expect):
        raise GraphLayoutError(f"layout has {num_nodes} nodes/{num_edges} edges, space.graph_size() says {expect}")

    # ---- bijection: every stored scalar in exactly one slot; the rest go to extras
    gather = torch.cat([node_gather.reshape(-1), edge_gather.reshape(-1)])
    real = gather[gather < num_main]
    counts_p = torch.bincount(real, minlength=num_main)
    if bool((counts_p > 1).any()):
        pos = int(torch.nonzero(counts_p > 1)[0])
        raise GraphLayoutError(f"scalar {pos} of tensor '{_owner(main_names, main_offsets, pos)}' is placed in "
                               "more than one node/edge slot")
    leftover = torch.nonzero(counts_p == 0).reshape(-1)
    extra_offsets = _offsets([space.tensors[n].numel for n in spec.extras])
    flat_node, flat_edge = node_gather.reshape(-1), edge_gather.reshape(-1)
    node_real = torch.nonzero(flat_node < num_main).reshape(-1)
    edge_real = torch.nonzero(flat_edge < num_main).reshape(-1)
    assert node_real.numel() + edge_real.numel() + leftover.numel() == num_main

    return GraphLayout(
        signature=space.signature, num_nodes=num_nodes, num_edges=num_edges, edge_dim=k,
        site_offsets=torch.tensor(site_off), conn_offsets=torch.tensor(_offsets(counts)),
        node_kind=_cat(node_kind), node_depth=torch.tensor([s.depth for s in sites], dtype=torch.long)[site_t],
        node_group=torch.tensor([s.group for s in sites], dtype=torch.long)[site_t], node_pos=_cat(node_pos),
        edge_index=edge_index,
        edge_kind=torch.repeat_interleave(torch.tensor(kinds, dtype=torch.long), count_t),
        edge_conn=torch.repeat_interleave(torch.arange(len(conns)), count_t),
        x_mask=node_gather < num_main, edge_mask=edge_gather < num_main,
        main_names=main_names, main_offsets=main_offsets, num_main=num_main,
        extra_names=tuple(spec.extras), extra_offsets=extra_offsets, leftover=leftover,
        num_extras=extra_offsets[-1] + leftover.numel(), gather=gather,
        node_real=node_real, node_src=flat_node[node_real], edge_real=edge_real, edge_src=flat_edge[edge_real],
        shapes={n: t.shape for n, t in space.tensors.items()}, aliases=tuple(spec.aliases),
        order=tuple(t.name for t in spec.tensors), copy_steps=tuple(steps), identity_ranges=tuple(ident),
    )


def _identity_edges(kind: str, ns: int, nd: int, heads: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
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


def _tensor_edges(blk: Block, sa: int, da: int, ns: int, nd: int, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(src_unit, dst_unit) per element of a block's canonical unit grid, row-major.

    A block with a diagonal axis (grouped conv) has edges only inside its
    blocks: one per stored weight, enumerated over the compact grid.
    """
    if blk.diagonal:
        units = blk.unit_shape
        if len(units) != 2 or {sa, da} != {0, 1} or units[sa] != ns or units[da] != nd:
            raise GraphLayoutError(f"{where}: block-diagonal block '{blk.tensor}' with units {units} does not "
                                   f"join sites of {ns} and {nd} units")
        coords = unit_indices(blk)
        return coords[sa], coords[da]
    units = blk.unit_shape
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


def _offsets(sizes: list[int]) -> tuple[int, ...]:
    out = [0]
    for s in sizes:
        out.append(out[-1] + int(s))
    return tuple(out)


def _cat(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(ts) if ts else torch.zeros(0, dtype=torch.long)


def _owner(names: tuple[str, ...], offsets: tuple[int, ...], pos: int) -> str:
    for n, a, b in zip(names, offsets, offsets[1:]):
        if a <= pos < b:
            return n
    return "?"


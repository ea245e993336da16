"""The parameter-graph layout of one architecture, computed once and cached.

A :class:`GraphLayout` turns a :class:`~wsl.space.WeightSpace` into index
tensors: node and edge attributes, the ``edge_index``, and the place of every
tensor block in the node features ``x`` and the edge features (one strided
copy per block, :mod:`wsl.graph.build`; decoding is its inverse,
:mod:`wsl.graph.decode`). The padded gather maps of ``edge_attr`` are built
only when a padded graph needs them.

Nodes
    One node per unit of every site, sites in spec order, units in group
    order: node ``site_offsets[s] + u`` is unit ``u`` of site ``s``.
    ``x[:, j]`` holds node slot ``NODE_SLOTS[j]`` (bias, norm_scale,
    norm_shift, running_mean, running_var, scale); ``x_mask[:, j]`` tells
    whether the slot holds a parameter (absent slots are 0).
Value nodes
    A node parameter with ``F > 1`` values per unit (a norm over positions x
    channels, a bias of rigid heads: :mod:`wsl.space.value_nodes`) gets
    ``units x F`` more nodes after all site nodes, node ``(u, f)`` holding its
    entry ``f`` of unit ``u`` in the parameter's slot (kind ``other``, depth
    and group of the site, ``node_pos = f``), each joined to unit node ``u``
    by one parameter-free edge (kind ``other``, ``edge_conn = -1``) placed
    after every connection's edges.
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
Ragged edges
    The same entries without the padding (:mod:`wsl.graph.ragged`):
    ``edge_values`` holds the ``F`` entries of every tensor edge, edge after
    edge, and ``edge_width`` each edge's ``F`` (0 for identity edges). Memory
    is then proportional to the number of weights: ResNet-18's padded
    ``edge_attr`` is 49 taps wide for 1.9M edges (its stem's 7x7 kernel)
    where most edges have 9.
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

from wsl.graph.edges import (CopyStep, GraphLayoutError, find_block, identity_edges, padded_gather,
                              tensor_edges)
from wsl.space.axes import canonical_flat_index
from wsl.space.spec import NODE_SLOTS, Block
from wsl.space.value_nodes import value_node_sets
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


@dataclass
class GraphLayout:
    """Index tensors shared by every parameter graph of one architecture (see module doc).

    The *main* flat vector of a model is the concatenation of its stored
    parameter tensors ``main_names`` (spec order, row-major; offsets in
    ``main_offsets``). ``node_gather`` ``(V, S)`` indexes ``[main, 0]`` (entry
    ``num_main`` is the constant 0 of an absent slot); ``node_real``/``node_src``
    are its inverse: position in ``x.flatten()`` -> position in ``main``.
    ``edge_width`` ``(E,)`` is the number of real entries of each edge (0 for
    identity edges); the ragged values of a graph are those entries, edge
    after edge (``num_values`` in all). ``copy_steps`` place every tensor
    block, as one strided copy, into the nodes, the padded ``edge_attr`` and
    the ragged values; ``identity_ranges`` are the edge ranges of
    parameter-free connections. ``leftover`` lists main positions with no
    slot (stored in ``extras`` after the ``extra_names`` entries).
    ``site_offsets``/``conn_offsets`` give the node/edge range of each site
    and connection.

    The padded maps -- ``gather`` (length ``V*S + E*K``, into ``[main, 0,
    1]``: ``num_main + 1`` is the constant 1 of identity edges), ``edge_mask``,
    ``edge_real``/``edge_src`` -- take ``E*K`` entries each and are computed
    on first use only.
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
    edge_width: torch.Tensor
    num_values: int
    x_mask: torch.Tensor
    node_gather: torch.Tensor
    main_names: tuple[str, ...]
    main_offsets: tuple[int, ...]
    num_main: int
    extra_names: tuple[str, ...]
    extra_offsets: tuple[int, ...]
    leftover: torch.Tensor
    num_extras: int
    node_real: torch.Tensor
    node_src: torch.Tensor
    shapes: dict[str, tuple[int, ...]]
    aliases: tuple[tuple[str, str], ...]
    order: tuple[str, ...]
    copy_steps: tuple[CopyStep, ...] = ()
    identity_ranges: tuple[tuple[int, int], ...] = ()
    _device_cache: dict[Any, "_DeviceView"] = field(default_factory=dict, repr=False)
    _structure_cache: dict[Any, dict[str, torch.Tensor]] = field(default_factory=dict, repr=False)
    _padded: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def stored_names(self) -> tuple[str, ...]:
        """Tensors stored in a graph (main, then extras); aliases are derived."""
        return self.main_names + self.extra_names

    @staticmethod
    def of(space: WeightSpace) -> "GraphLayout":
        """The layout of ``space`` (computed once, cached on the space)."""
        return space.cached("graph.layout", _compute)

    # ------------------------------------------------------- padded maps (lazy)
    def _padded_map(self, name: str) -> torch.Tensor:
        if not self._padded:
            offsets = dict(zip(self.main_names, self.main_offsets))
            g = padded_gather(self.num_edges, self.edge_dim, self.num_main, self.copy_steps, self.identity_ranges,
                              offsets, self.shapes)
            flat = g.reshape(-1)
            real = torch.nonzero(flat < self.num_main).reshape(-1)
            self._padded.update(gather=torch.cat([self.node_gather.reshape(-1), flat]), edge_mask=g < self.num_main,
                                edge_real=real, edge_src=flat[real])
        return self._padded[name]

    @property
    def gather(self) -> torch.Tensor:
        return self._padded_map("gather")

    @property
    def edge_mask(self) -> torch.Tensor:
        return self._padded_map("edge_mask")

    @property
    def edge_real(self) -> torch.Tensor:
        return self._padded_map("edge_real")

    @property
    def edge_src(self) -> torch.Tensor:
        return self._padded_map("edge_src")

    def on(self, device: torch.device) -> "_DeviceView":
        """Index tensors used by build/decode, moved to ``device`` on first use (cached per device)."""
        key = str(device)
        if key not in self._device_cache:
            self._device_cache[key] = _DeviceView(self, device)
        return self._device_cache[key]

    def shared(self, key: Any, build: Callable[[], dict[str, torch.Tensor]], limit: int) -> dict[str, torch.Tensor]:
        """``build()``, kept per ``key`` with at most ``limit`` entries (oldest dropped); returns a shallow copy."""
        if key not in self._structure_cache:
            while len(self._structure_cache) >= limit:
                self._structure_cache.pop(next(iter(self._structure_cache)))
            self._structure_cache[key] = build()
        return dict(self._structure_cache[key])


class _DeviceView:
    """``view[name]``: the layout's tensor ``name`` on one device, moved (or computed) on first access."""

    def __init__(self, layout: GraphLayout, device: torch.device) -> None:
        self.layout, self.device = layout, device
        self.moved: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.moved:
            if name == "gather_x":
                self.moved[name] = self.layout.node_gather.reshape(-1).to(self.device)
            elif name == "gather_edge":
                self.moved[name] = self["gather"][self.layout.num_nodes * NUM_SLOTS:]
            else:
                self.moved[name] = getattr(self.layout, name).to(self.device)
        return self.moved[name]


def _compute(space: WeightSpace) -> GraphLayout:
    spec = space.spec
    groups, sites, conns = space.groups, space.sites, space.connections
    alias_names = {a for a, _ in spec.aliases}
    extra_set = set(spec.extras)
    main_names = tuple(t.name for t in spec.tensors if t.name not in alias_names and t.name not in extra_set)
    main_offsets = _offsets([space.tensors[n].numel for n in main_names])
    num_main = main_offsets[-1]
    off_of = dict(zip(main_names, main_offsets))
    zero = num_main

    sizes = [groups[s.group].size for s in sites]
    site_off = _offsets(sizes)
    value_sets, value_of = value_node_sets(spec)
    value_off = _offsets([v.count for v in value_sets], start=site_off[-1])
    num_nodes = value_off[-1]
    outgoing = {c.src for c in conns}

    node_kind, node_pos = [], []
    for s, n in zip(sites, sizes):
        g = groups[s.group]
        kind = s.kind if s.kind in NODE_KINDS else "other"
        if g.fixed and s.id not in outgoing and s.kind not in ("input", "tokens", "source"):
            kind = "output"
        node_kind.append(torch.full((n,), NODE_KINDS[kind]))
        node_pos.append(torch.arange(n) if g.fixed else torch.full((n,), -1))
    for vs in value_sets:
        node_kind.append(torch.full((vs.count,), NODE_KINDS["other"]))
        node_pos.append(torch.arange(vs.width).repeat(vs.units))
    site_t = torch.cat([torch.repeat_interleave(torch.arange(len(sites)), torch.tensor(sizes, dtype=torch.long))]
                       + [torch.full((v.count,), v.site) for v in value_sets])  # the site of every node

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
    for p, vi in zip(spec.node_params, value_of):
        where = f"node param '{p.tensor}' ({p.slot}) of site {p.site}"
        blk, idx = main_index(p.tensor, p.part, where)
        grp = sites[p.site].group
        if blk.unit_groups != (grp,) or blk.unit_shape != (sizes[p.site],) or (vi is None) != (blk.feature_size == 1):
            raise GraphLayoutError(f"{where}: block units {blk.unit_groups}x{blk.feature_size} do not match "
                                   f"the site's group {grp}")
        a, b = (site_off[p.site], site_off[p.site + 1]) if vi is None else (value_off[vi], value_off[vi + 1])
        node_gather[a:b, NODE_SLOTS.index(p.slot)] = idx
        steps.append(CopyStep(p.tensor, blk, "x", a, b, NODE_SLOTS.index(p.slot), 1))

    # ---- edges, one connection at a time (vectorized inside)
    widths = [find_block(space.tensors[c.tensor], c.part).feature_size for c in conns if c.tensor is not None]
    k = max(widths + [1])
    placed = torch.zeros(num_main, dtype=torch.int32)  # how many slots hold each stored scalar
    real_nodes = node_gather[node_gather < num_main]
    placed.index_add_(0, real_nodes, torch.ones_like(real_nodes, dtype=torch.int32))
    srcs, dsts, kinds, counts, ewidth = [], [], [], [], []
    e0 = v0 = 0
    for ci, c in enumerate(conns):
        where = f"connection {ci} ({c.kind} '{c.module}')"
        ns, nd = sizes[c.src], sizes[c.dst]
        if c.tensor is None:
            su, du = identity_edges(c.kind, ns, nd, int(c.attr("heads", 1)), where)
            ident.append((e0, e0 + su.numel()))
            f = 0
        else:
            blk, idx = main_index(c.tensor, c.part, where)
            su, du = tensor_edges(blk, c.src_axis, c.dst_axis, ns, nd, where)
            f = blk.feature_size
            placed.index_add_(0, idx, torch.ones_like(idx, dtype=torch.int32))
            steps.append(CopyStep(c.tensor, blk, "edge", e0, e0 + su.numel(), 0, f, v0))
            v0 += su.numel() * f
        srcs.append(su + site_off[c.src])
        dsts.append(du + site_off[c.dst])
        kinds.append(EDGE_KINDS.get(c.kind, EDGE_KINDS["other"]))
        counts.append(su.numel())
        ewidth.append(f)
        e0 += su.numel()
    for vs, a in zip(value_sets, value_off):  # value nodes hang off their unit (one identity edge each)
        ident.append((e0, e0 + vs.count))
        srcs.append(torch.arange(vs.units).repeat_interleave(vs.width) + site_off[vs.site])
        dsts.append(torch.arange(vs.count) + a)
        e0 += vs.count
    num_value_edges = sum(v.count for v in value_sets)
    count_t = torch.tensor(counts, dtype=torch.long)
    edge_index = torch.stack([_cat(srcs), _cat(dsts)])
    num_edges = int(edge_index.shape[1])
    expect = space.graph_size()
    if (num_nodes, num_edges) != tuple(expect):
        raise GraphLayoutError(f"layout has {num_nodes} nodes/{num_edges} edges, space.graph_size() says {expect}")

    # ---- bijection: every stored scalar in exactly one slot; the rest go to extras
    if bool((placed > 1).any()):
        pos = int(torch.nonzero(placed > 1)[0])
        raise GraphLayoutError(f"scalar {pos} of tensor '{_owner(main_names, main_offsets, pos)}' is placed in "
                               "more than one node/edge slot")
    leftover = torch.nonzero(placed == 0).reshape(-1)
    del placed
    extra_offsets = _offsets([space.tensors[n].numel for n in spec.extras])
    flat_node = node_gather.reshape(-1)
    node_real = torch.nonzero(flat_node < num_main).reshape(-1)
    assert node_real.numel() + v0 + leftover.numel() == num_main

    return GraphLayout(
        signature=space.signature, num_nodes=num_nodes, num_edges=num_edges, edge_dim=k,
        site_offsets=torch.tensor(site_off), conn_offsets=torch.tensor(_offsets(counts)),
        node_kind=_cat(node_kind), node_depth=torch.tensor([s.depth for s in sites], dtype=torch.long)[site_t],
        node_group=torch.tensor([s.group for s in sites], dtype=torch.long)[site_t], node_pos=_cat(node_pos),
        edge_index=edge_index,
        edge_kind=_cat([torch.repeat_interleave(torch.tensor(kinds, dtype=torch.long), count_t),
                        torch.full((num_value_edges,), EDGE_KINDS["other"])]),
        edge_conn=_cat([torch.repeat_interleave(torch.arange(len(conns)), count_t),
                        torch.full((num_value_edges,), -1)]),
        edge_width=_cat([torch.repeat_interleave(torch.tensor(ewidth, dtype=torch.long), count_t),
                         torch.zeros(num_value_edges, dtype=torch.long)]), num_values=v0,
        x_mask=node_gather < num_main, node_gather=node_gather,
        main_names=main_names, main_offsets=main_offsets, num_main=num_main,
        extra_names=tuple(spec.extras), extra_offsets=extra_offsets, leftover=leftover,
        num_extras=extra_offsets[-1] + leftover.numel(),
        node_real=node_real, node_src=flat_node[node_real],
        shapes={n: t.shape for n, t in space.tensors.items()}, aliases=tuple(spec.aliases),
        order=tuple(t.name for t in spec.tensors), copy_steps=tuple(steps), identity_ranges=tuple(ident),
    )


def _offsets(sizes: list[int], start: int = 0) -> tuple[int, ...]:
    out = [start]
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


"""Input encoders shared by the graph meta-models (NG-GNN, NG-T).

A :class:`~wsl.graph.ParameterGraph` batch carries raw parameters (``x``,
``edge_attr``) plus structural codes (``node_kind``, ``node_depth``,
``node_pos``, ``edge_kind``). The encoders turn them into ``hidden``-wide node
and edge states:

Nodes (:class:`NodeEncoder`)
    ``h_v = W_x [x_v * m_v, m_v] + E_kind[kind_v] + E_depth[min(depth_v, D-1)]
    + [pos_v >= 0] * E_pos[min(pos_v, P-1)]`` where ``m_v`` is the slot mask
    ``x_mask``. Permutable units have ``pos_v = -1`` and get *no* positional
    embedding -- this is what keeps every model built on the encoder
    permutation equivariant; the fixed units (network inputs, outputs,
    tokens) are told apart by their position.
Edges (:class:`EdgeEncoder`)
    ``e_uv = W_e [pad(a_uv), pad(m_uv), |m_uv| / K] + E_kind[kind_uv]`` where
    ``a_uv`` is the edge's ``edge_attr`` row (kernel taps / flattened
    positions; identity edges hold a constant 1), right-padded with zeros to
    the encoder's ``max_edge_width`` ``K``, ``m_uv`` its ``edge_mask`` row and
    ``|m_uv|`` the number of real entries (the kernel size, as a feature).

:func:`graph_index` and :func:`dense_index` give per-node graph ids and
positions inside a graph, vectorized, for single graphs and PyG batches
(including mixed-architecture batches from :func:`wsl.graph.collate`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsl.errors import WslError
from wsl.graph.layout import EDGE_KINDS, NODE_KINDS, NUM_SLOTS
from wsl.graph.ragged import edge_features, is_ragged

__all__ = ["GraphEncodingError", "NodeEncoder", "EdgeEncoder", "GraphEncoder", "graph_index", "dense_index",
           "check_graph"]

_NODE_ATTRS = ("x", "x_mask", "node_kind", "node_depth", "node_pos", "edge_index", "edge_attr", "edge_mask",
               "edge_kind")


class GraphEncodingError(WslError):
    """A graph batch lacks an attribute, or has one the encoder cannot represent."""


def check_graph(data: Any, where: str) -> None:
    """Raise :class:`GraphEncodingError` unless ``data`` has every ParameterGraph attribute the models read.

    Ragged graphs (``edge_values``/``edge_width``, :mod:`wsl.graph.ragged`) stand for ``edge_attr``/``edge_mask``.
    """
    ragged = is_ragged(data)
    missing = [k for k in _NODE_ATTRS if getattr(data, k, None) is None
               and not (ragged and k in ("edge_attr", "edge_mask"))]
    if missing:
        raise GraphEncodingError(f"{where}: input graph lacks attribute(s) {missing}; build it with "
                                 "wsl.graph.build/build_one/collate")
    v, s = data.x.shape if data.x.dim() == 2 else (-1, -1)
    if s != NUM_SLOTS:
        raise GraphEncodingError(f"{where}: 'x' has shape {tuple(data.x.shape)}, expected (V, {NUM_SLOTS})")
    rows = data.edge_width if ragged else data.edge_attr
    if rows.dim() != (1 if ragged else 2) or rows.shape[0] != data.edge_index.shape[1]:
        raise GraphEncodingError(f"{where}: edge features have shape {tuple(rows.shape)} for "
                                 f"{data.edge_index.shape[1]} edges")
    if data.node_kind.shape[0] != v:
        raise GraphEncodingError(f"{where}: 'node_kind' has {data.node_kind.shape[0]} entries for {v} nodes")


def graph_index(data: Any) -> tuple[torch.Tensor, int]:
    """``(batch, num_graphs)``: the graph id of every node (zeros for a single graph)."""
    batch = getattr(data, "batch", None)
    if batch is None:
        return torch.zeros(data.x.shape[0], dtype=torch.long, device=data.x.device), 1
    num = getattr(data, "num_graphs", None)
    return batch, int(num) if num is not None else int(batch.max()) + 1 if batch.numel() else 0


def dense_index(batch: torch.Tensor, num_graphs: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(local, counts, n_max)``: each node's position inside its graph, nodes per graph, the largest count.

    Nodes of a graph must be contiguous (as in every PyG batch).
    """
    counts = torch.bincount(batch, minlength=num_graphs)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(batch.numel(), device=batch.device) - start[batch]
    n_max = int(counts.max()) if counts.numel() else 0
    return local, counts, n_max


class NodeEncoder(nn.Module):
    """Node states from slots, kinds, depths and fixed-unit positions (equation in the module docstring).

    Args:
        hidden: output width.
        max_depth: depths ``>= max_depth`` share the last depth embedding.
        max_pos: positions ``>= max_pos`` of fixed units share the last positional embedding.
        num_kinds: size of the node-kind vocabulary (default: every code in ``NODE_KINDS``).
    """

    def __init__(self, hidden: int, max_depth: int = 64, max_pos: int = 1024,
                 num_kinds: int = len(NODE_KINDS)) -> None:
        super().__init__()
        if min(hidden, max_depth, max_pos, num_kinds) < 1:
            raise GraphEncodingError(f"NodeEncoder: sizes must be positive, got hidden={hidden}, "
                                     f"max_depth={max_depth}, max_pos={max_pos}, num_kinds={num_kinds}")
        self.max_depth, self.max_pos, self.num_kinds = max_depth, max_pos, num_kinds
        self.slots = nn.Linear(2 * NUM_SLOTS, hidden)
        self.kind = nn.Embedding(num_kinds, hidden)
        self.depth = nn.Embedding(max_depth, hidden)
        self.pos = nn.Embedding(max_pos, hidden)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, node_kind: torch.Tensor, node_depth: torch.Tensor,
                node_pos: torch.Tensor) -> torch.Tensor:
        """``(V, S)`` slots + codes -> ``(V, hidden)`` node states."""
        if node_kind.numel() and (int(node_kind.min()) < 0 or int(node_kind.max()) >= self.num_kinds):
            raise GraphEncodingError(f"NodeEncoder: node_kind codes must lie in [0, {self.num_kinds}), got "
                                     f"[{int(node_kind.min())}, {int(node_kind.max())}]")
        m = x_mask.to(self.slots.weight.dtype)
        h = self.slots(torch.cat([x.to(m.dtype) * m, m], dim=-1))
        h = h + self.kind(node_kind) + self.depth(node_depth.clamp(0, self.max_depth - 1))
        fixed = (node_pos >= 0).unsqueeze(-1).to(h.dtype)
        return h + fixed * self.pos(node_pos.clamp(0, self.max_pos - 1))


class EdgeEncoder(nn.Module):
    """Edge states from (padded) weights, masks and kinds (equation in the module docstring).

    Args:
        hidden: output width.
        max_edge_width: ``K``; wider ``edge_attr`` raises :class:`GraphEncodingError`
            (raise it for architectures with large kernels or flattened inputs).
        num_kinds: size of the edge-kind vocabulary (default: every code in ``EDGE_KINDS``).
    """

    def __init__(self, hidden: int, max_edge_width: int = 64, num_kinds: int = len(EDGE_KINDS)) -> None:
        super().__init__()
        if min(hidden, max_edge_width, num_kinds) < 1:
            raise GraphEncodingError(f"EdgeEncoder: sizes must be positive, got hidden={hidden}, "
                                     f"max_edge_width={max_edge_width}, num_kinds={num_kinds}")
        self.width, self.num_kinds = max_edge_width, num_kinds
        self.attr = nn.Linear(2 * max_edge_width + 1, hidden)
        self.kind = nn.Embedding(num_kinds, hidden)

    def pad(self, t: torch.Tensor, where: str = "EdgeEncoder") -> torch.Tensor:
        """Right-pad ``(E, k)`` to ``(E, max_edge_width)``; raises if ``k`` is wider."""
        k = int(t.shape[-1])
        if k > self.width:
            raise GraphEncodingError(f"{where}: edge_attr has width {k} (kernel taps / flattened positions), "
                                     f"wider than max_edge_width={self.width}; build the model with "
                                     f"max_edge_width >= {k}")
        return F.pad(t, (0, self.width - k)) if k < self.width else t

    def forward(self, edge_attr: torch.Tensor, edge_mask: torch.Tensor, edge_kind: torch.Tensor) -> torch.Tensor:
        """``(E, k)`` weights + masks + kinds -> ``(E, hidden)`` edge states."""
        if edge_kind.numel() and (int(edge_kind.min()) < 0 or int(edge_kind.max()) >= self.num_kinds):
            raise GraphEncodingError(f"EdgeEncoder: edge_kind codes must lie in [0, {self.num_kinds}), got "
                                     f"[{int(edge_kind.min())}, {int(edge_kind.max())}]")
        dt = self.attr.weight.dtype
        m = self.pad(edge_mask.to(dt))
        a = self.pad(edge_attr.to(dt))
        size = m.sum(-1, keepdim=True) / self.width
        return self.attr(torch.cat([a, m, size], dim=-1)) + self.kind(edge_kind)


class GraphEncoder(nn.Module):
    """Both encoders: ``data -> (h (V, hidden), e (E, hidden))`` for a ParameterGraph or a batch of them."""

    def __init__(self, hidden: int, max_edge_width: int = 64, max_depth: int = 64, max_pos: int = 1024) -> None:
        super().__init__()
        self.hidden = hidden
        self.nodes = NodeEncoder(hidden, max_depth=max_depth, max_pos=max_pos)
        self.edges = EdgeEncoder(hidden, max_edge_width=max_edge_width)

    @property
    def max_edge_width(self) -> int:
        return self.edges.width

    def forward(self, data: Any) -> tuple[torch.Tensor, torch.Tensor]:
        check_graph(data, type(self).__name__)
        h = self.nodes(data.x, data.x_mask, data.node_kind, data.node_depth, data.node_pos)
        attr, mask = edge_features(data)  # ragged graphs are padded here, once
        e = self.edges(attr, mask, data.edge_kind)
        return h, e

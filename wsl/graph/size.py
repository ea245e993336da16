"""How big a parameter graph will be, from the weight-space spec alone (nothing is built).

For ``V`` nodes, ``E`` edges of which the widest carries ``K`` entries, ``R``
real edge entries and ``S`` node slots, one graph with ``b``-byte features
holds::

    x, x_mask                      V*S*(b + 1)
    node_kind/depth/group/pos      4*V*8
    edge_index, edge_kind/conn     4*E*8
    padded: edge_attr, edge_mask   E*K*(b + 1)
    ragged: edge_values, width     R*b + E*8

and building it also holds the layout (about ``5*E*8`` bytes of index tensors,
plus ``E*K*9`` for the padded gather maps). :func:`check_graph_fits` compares
that with the memory available and raises :class:`GraphTooLargeError` (with
the estimate) before anything is allocated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from wsl.errors import WslError
from wsl.space.spec import NODE_SLOTS
from wsl.space.weightspace import WeightSpace

__all__ = ["GraphDims", "GraphTooLargeError", "available_memory", "check_graph_fits", "estimate_graph_bytes",
           "graph_dims"]

#: ``edges="auto"`` stores ragged edges when padding would more than double the edge features and make
#: them larger than this (bytes per graph); small architectures keep the padded ``edge_attr``.
AUTO_RAGGED_BYTES = 16 * 2 ** 20


class GraphTooLargeError(WslError):
    """A parameter graph would not fit in memory (the message gives the estimate)."""


@dataclass(frozen=True)
class GraphDims:
    """Sizes of one architecture's parameter graph (see module docstring)."""

    num_nodes: int
    num_edges: int
    edge_dim: int
    num_values: int

    def padded_bytes(self, itemsize: int = 4) -> int:
        """``edge_attr`` + ``edge_mask`` of one padded graph."""
        return self.num_edges * self.edge_dim * (itemsize + 1)

    def ragged_bytes(self, itemsize: int = 4) -> int:
        """``edge_values`` + ``edge_width`` of one ragged graph."""
        return self.num_values * itemsize + self.num_edges * 8

    def edge_format(self, edges: str = "auto", itemsize: int = 4) -> str:
        """``"padded"`` or ``"ragged"``: what ``edges`` (``auto``/``padded``/``ragged``) means for this graph."""
        if edges not in ("auto", "padded", "ragged"):
            raise WslError(f"edges must be 'auto', 'padded' or 'ragged', got {edges!r}")
        if edges != "auto":
            return edges
        padded, ragged = self.padded_bytes(itemsize), self.ragged_bytes(itemsize)
        return "ragged" if padded > 2 * ragged and padded > AUTO_RAGGED_BYTES else "padded"


def graph_dims(space: WeightSpace) -> GraphDims:
    """Nodes, edges, widest edge and real edge entries of ``space``'s graph (cached on the space)."""
    def compute(sp: WeightSpace) -> GraphDims:
        nodes, edges = sp.graph_size()
        k, values = 1, 0
        for c in sp.connections:
            if c.tensor is None:
                continue
            t = sp.tensors[c.tensor]
            blk = next(b for b in t.blocks() if not c.part or b.part == tuple(c.part))
            units = blk.compact_unit_shape
            n = units[c.src_axis] if c.src_axis == c.dst_axis else units[c.src_axis] * units[c.dst_axis]
            k = max(k, blk.feature_size)
            values += n * blk.feature_size
        return GraphDims(nodes, edges, k, values)

    return space.cached("graph.dims", compute)


def estimate_graph_bytes(space: WeightSpace, edges: str = "auto", itemsize: int = 4, num_graphs: int = 1,
                         building: bool = True) -> int:
    """Bytes of ``num_graphs`` graphs of ``space`` (plus the layout while ``building``), from the spec."""
    d = graph_dims(space)
    slots = len(NODE_SLOTS)
    fmt = d.edge_format(edges, itemsize)
    per_graph = (d.num_nodes * slots * (itemsize + 1) + 4 * d.num_nodes * 8 + 4 * d.num_edges * 8
                 + (d.padded_bytes(itemsize) if fmt == "padded" else d.ragged_bytes(itemsize)))
    layout = 5 * d.num_edges * 8 + (d.num_edges * d.edge_dim * 9 if fmt == "padded" else 0)
    return num_graphs * per_graph + (layout if building else 0)


def available_memory() -> int | None:
    """Bytes the system can still hand out (``MemAvailable`` of ``/proc/meminfo``), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.1f} MiB"


def check_graph_fits(space: WeightSpace, edges: str = "auto", itemsize: int = 4, num_graphs: int = 1,
                     limit: int | None = None, where: str = "") -> int:
    """The estimate of :func:`estimate_graph_bytes`; raises :class:`GraphTooLargeError` above ``limit``.

    ``limit`` defaults to the ``WSL_GRAPH_MEMORY`` environment variable (bytes) or else the memory the
    system has available; with neither known, nothing is refused.
    """
    need = estimate_graph_bytes(space, edges, itemsize, num_graphs)
    if limit is None and os.environ.get("WSL_GRAPH_MEMORY"):
        limit = int(float(os.environ["WSL_GRAPH_MEMORY"]))
    if limit is None:
        limit = available_memory()
    if limit is not None and need > limit:
        d = graph_dims(space)
        fmt = d.edge_format(edges, itemsize)
        raise GraphTooLargeError(
            f"{where + ': ' if where else ''}the parameter graph would take about {_gib(need)} ({d.num_nodes:,} "
            f"nodes, {d.num_edges:,} edges, {fmt} edges of up to {d.edge_dim} entries), more than the "
            f"{_gib(limit)} available; " + ("build it with edges='ragged' (CLI: --edges ragged)" if fmt == "padded"
                                             else "it needs a machine with more memory"))
    return need

"""``ParameterGraph``: a PyG ``Data`` holding one network's parameters as a graph.

Attributes (``V`` nodes, ``E`` edges, ``S = len(NODE_SLOTS)`` node slots,
``K`` edge width; see :mod:`wsl.graph.layout` for the exact placement):

==============  ============  ===================================================
``x``           (V, S) float  node slots: bias, norm_scale, norm_shift,
                              running_mean, running_var, scale
``x_mask``      (V, S) bool   which node slots hold a parameter
``edge_index``  (2, E) long   (source node, destination node)
``edge_attr``   (E, K) float  weights; kernel taps / flattened positions
                              row-major in columns ``0..F-1``, zero padded;
                              identity edges: ``1`` in column 0
``edge_mask``   (E, K) bool   which edge entries hold a parameter
``edge_kind``   (E,) long     connection kind, codes in ``EDGE_KINDS``
``edge_conn``   (E,) long     index of the connection in ``space.connections``
``node_kind``   (V,) long     site kind, codes in ``NODE_KINDS``
``node_depth``  (V,) long     layer index of the node's site
``node_group``  (V,) long     unit group of the node's site
``node_pos``    (V,) long     unit index in a fixed group (input/output/token
                              positions), ``-1`` for permutable units
``extras``      (X,) float64  unit-free entries (e.g. ``num_batches_tracked``)
                              and scalars with no node/edge slot
``num_extras``  (1,) long     ``X`` (so batches of mixed architectures split)
``arch``        str           ``space.signature``
``dtypes``      str           comma-separated dtypes of the stored tensors
==============  ============  ===================================================

Graphs of different architectures batch with :func:`collate`, which pads
``edge_attr``/``edge_mask`` to a common width; ``extras`` of different lengths
are concatenated (``num_extras`` tells them apart). Graphs of big
architectures store ``edge_values`` ``(sum of widths,)`` and ``edge_width``
``(E,)`` instead of ``edge_attr``/``edge_mask`` (ragged, no padding: see
:mod:`wsl.graph.ragged`); ``graph.edge_attr`` still answers, padded on access.
"""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from wsl.errors import WslError
from wsl.graph.ragged import padded_edges


class GraphDataError(WslError):
    """Graphs that cannot be batched, split or decoded as asked."""


class ParameterGraph(Data):  # type: ignore[misc]
    """One network's parameters as a graph (attributes in the module docstring).

    A graph with ragged edges (``edge_values``/``edge_width``, see
    :mod:`wsl.graph.ragged`) answers ``edge_attr``/``edge_mask`` with the
    padded form, computed on each access (not stored).
    """

    def _padded_view(self, key: str) -> torch.Tensor:
        attr, mask = padded_edges(self._store["edge_values"], self._store["edge_width"])
        return attr if key == "edge_attr" else mask

    def __getattr__(self, key: str) -> Any:
        if key == "edge_mask" and "_store" in self.__dict__ and "edge_values" in self._store \
                and "edge_mask" not in self._store:
            return self._padded_view(key)
        return super().__getattr__(key)

    @property  # Data defines edge_attr as a property, so __getattr__ never sees it
    def edge_attr(self) -> torch.Tensor | None:
        store = self._store
        if "edge_attr" not in store and "edge_values" in store:
            return self._padded_view("edge_attr")
        return store["edge_attr"] if "edge_attr" in store else None

    @edge_attr.setter
    def edge_attr(self, value: torch.Tensor | None) -> None:
        self._store.edge_attr = value

    @property
    def edge_dim(self) -> int:
        """Width ``K`` of ``edge_attr`` (the widest edge of a ragged graph)."""
        if "edge_values" in self._store:
            w = self._store["edge_width"]
            return max(int(w.max()), 1) if w.numel() else 1
        return int(self.edge_attr.shape[-1])


def make_batch(attrs: dict[str, torch.Tensor], strings: dict[str, list[str]], num_graphs: int,
               nodes_per_graph: int) -> Batch:
    """A PyG ``Batch`` of ``num_graphs`` equally-shaped graphs from already-concatenated tensors.

    Equivalent to ``Batch.from_data_list`` (``to_data_list``/``get_example``
    work) without building the graphs one by one. ``edge_index`` must already
    be offset by ``nodes_per_graph`` per graph.
    """
    n = num_graphs
    batch = Batch(_base_cls=ParameterGraph)
    slices: dict[str, torch.Tensor] = {}
    incs: dict[str, torch.Tensor | None] = {}
    for key, val in attrs.items():
        dim = -1 if key == "edge_index" else 0
        if val.shape[dim] % n:
            raise GraphDataError(f"make_batch: attribute '{key}' of size {val.shape[dim]} does not split "
                                 f"into {n} graphs")
        batch[key] = val
        slices[key] = torch.arange(n + 1) * (val.shape[dim] // n)
        incs[key] = torch.arange(n) * nodes_per_graph if key == "edge_index" else torch.zeros(n, dtype=torch.long)
    for key, vals in strings.items():
        batch[key] = list(vals)
        slices[key] = torch.arange(n + 1)
        incs[key] = None
    dev = attrs["x"].device if "x" in attrs else None
    batch.batch = torch.arange(n, device=dev).repeat_interleave(nodes_per_graph)
    batch.ptr = torch.arange(n + 1, device=dev) * nodes_per_graph
    batch._num_graphs = n
    batch._slice_dict = slices
    batch._inc_dict = incs
    return batch


def batch_keys(batch: Batch) -> list[str]:
    """The per-graph attributes of a batch, in batching order (not ``batch``/``ptr``).

    Batches made by :func:`make_batch` or :func:`collate` record them where PyG
    does (its ``_slice_dict``); this is the one place that reads it.
    """
    return list(batch._slice_dict)


def collate(graphs: Sequence[ParameterGraph], edge_dim: int | None = None) -> Batch:
    """Batch parameter graphs of any architectures into one PyG ``Batch``.

    ``edge_attr``/``edge_mask`` are zero/False-padded on the right to
    ``edge_dim`` (default: the widest graph). The inputs are not modified.
    """
    graphs = list(graphs)
    if not graphs:
        raise GraphDataError("collate: no graphs given")
    for i, g in enumerate(graphs):
        if not isinstance(g, Data) or not ("edge_attr" in g or "edge_values" in g):
            raise GraphDataError(f"collate: item {i} is not a ParameterGraph (got {type(g).__name__})")
    if all("edge_values" in g for g in graphs):  # ragged graphs batch as they are: no padding
        widest = max(int(g.edge_width.max()) if g.edge_width.numel() else 1 for g in graphs)
        if edge_dim is not None and int(edge_dim) < widest:
            raise GraphDataError(f"collate: edge_dim={edge_dim} is narrower than the widest graph ({widest})")
        return Batch.from_data_list(graphs)
    graphs = [_padded_copy(g) if "edge_values" in g else g for g in graphs]
    widest = max(int(g.edge_attr.shape[1]) for g in graphs)
    k = widest if edge_dim is None else int(edge_dim)
    if k < widest:
        raise GraphDataError(f"collate: edge_dim={k} is narrower than the widest graph ({widest})")
    out = []
    for g in graphs:
        pad = k - int(g.edge_attr.shape[1])
        if pad:
            g = copy.copy(g)
            g.edge_attr = F.pad(g.edge_attr, (0, pad))
            g.edge_mask = F.pad(g.edge_mask, (0, pad))
        out.append(g)
    return Batch.from_data_list(out)


def _padded_copy(g: Data) -> Data:
    """A shallow copy of a ragged graph with padded ``edge_attr``/``edge_mask`` instead."""
    out = copy.copy(g)
    attr, mask = padded_edges(g.edge_values, g.edge_width)
    del out.edge_values, out.edge_width
    out.edge_attr, out.edge_mask = attr, mask
    return out


def to_graphs(batch: Batch) -> list[ParameterGraph]:
    """Split a batch (from :func:`~wsl.graph.build` or :func:`collate`) into graphs."""
    if not hasattr(batch, "_slice_dict"):
        raise GraphDataError("to_graphs: this Batch was not made by wsl.graph.build/collate or from_data_list")
    return list(batch.to_data_list())


def extras_list(batch: Batch) -> list[torch.Tensor]:
    """The per-graph ``extras`` vectors of a batch (their lengths may differ)."""
    return list(torch.split(batch.extras, batch.num_extras.tolist()))

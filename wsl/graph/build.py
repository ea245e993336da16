"""Build parameter graphs for many models at once.

:func:`build` turns a stacked state_dict (``N`` models of one architecture)
into one PyG ``Batch``, vectorized over models. By default each tensor block's
canonical view is written into its node/edge range with one strided copy (a
loop over the architecture's blocks, never over models or edges);
``method="gather"`` instead indexes the concatenated flat parameter vectors
with the layout's gather map in a single ``index_select``. The batch
``edge_index`` is the layout's ``edge_index`` plus per-graph node offsets, by
broadcasting.

Dtypes: node/edge features use the promoted dtype of the stored parameter
tensors (float16 + float32 -> float32, exact); ``extras`` are float64 (exact
for every float dtype and for integers up to 2**53). The original dtype of
every tensor is recorded in ``dtypes`` so decoding is bit-exact.

Edges are stored padded (``edge_attr`` ``(E, K)``) or, for big architectures,
ragged (``edge_values``: every real entry once; :mod:`wsl.graph.ragged`).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch_geometric.data import Batch

from wsl.errors import WslError
from wsl.graph.data import ParameterGraph, make_batch, to_graphs
from wsl.graph.layout import NUM_SLOTS, GraphLayout
from wsl.graph.size import graph_dims
from wsl.space.axes import to_compact
from wsl.space.weightspace import WeightSpace

__all__ = ["build", "build_one", "feature_dtype", "to_graphs"]

_EXACT_INT = 2 ** 53


class GraphBuildError(WslError):
    """A state_dict cannot be turned into a parameter graph."""


def feature_dtype(layout: GraphLayout, stacked: Mapping[str, torch.Tensor]) -> torch.dtype:
    """The dtype of ``x``/``edge_attr``: the promotion of every stored parameter's dtype."""
    dt: torch.dtype | None = None
    for name in layout.main_names:
        t = stacked[name]
        if not t.is_floating_point():
            raise GraphBuildError(f"tensor '{name}' has dtype {t.dtype}; graph node/edge features must be floating")
        dt = t.dtype if dt is None else torch.promote_types(dt, t.dtype)
    return dt if dt is not None else torch.get_default_dtype()


def _dtype_string(layout: GraphLayout, stacked: Mapping[str, torch.Tensor]) -> str:
    return ",".join(str(stacked[n].dtype).replace("torch.", "") for n in layout.stored_names)


def _assemble(space: WeightSpace, stacked: Mapping[str, torch.Tensor], method: str = "copy",
              reuse_structure: bool = False, edges: str = "auto") -> tuple[dict[str, torch.Tensor], int, str]:
    """All graph tensors of ``N`` models, concatenated over graphs; returns (attrs, N, dtypes)."""
    if method not in ("copy", "gather"):
        raise GraphBuildError(f"wsl.graph.build: method must be 'copy' or 'gather', got {method!r}")
    lay = GraphLayout.of(space)
    space.check(stacked, batched=True, where="wsl.graph.build")
    n = int(stacked[space.spec.tensors[0].name].shape[0]) if space.spec.tensors else 0
    if n == 0:
        raise GraphBuildError("wsl.graph.build: the stacked state_dict holds no models (N=0)")
    dev = stacked[space.spec.tensors[0].name].device
    idx = lay.on(dev)
    fdt = feature_dtype(lay, stacked)
    v, e, k, s = lay.num_nodes, lay.num_edges, lay.edge_dim, NUM_SLOTS
    try:
        ragged = graph_dims(space).edge_format(edges, torch.empty((), dtype=fdt).element_size()) == "ragged"
    except WslError as e:
        raise GraphBuildError(f"wsl.graph.build: {e}") from e
    if ragged:
        method = "copy"  # ragged values are always written block by block

    flat = None
    if method == "gather" or lay.leftover.numel():
        parts = [stacked[name].reshape(n, -1).to(fdt) for name in lay.main_names]
        parts.append(torch.zeros(n, 1, dtype=fdt, device=dev))
        parts.append(torch.ones(n, 1, dtype=fdt, device=dev))
        flat = torch.cat(parts, dim=1)
    if method == "gather":
        assert flat is not None
        x = flat.index_select(1, idx["gather_x"]).view(n * v, s)
        edge_attr = flat.index_select(1, idx["gather_edge"]).view(n * e, k)
    else:
        x, edge_attr = _copy_blocks(lay, stacked, n, fdt, dev, ragged)

    ex = [_extra_to_f64(name, stacked[name], n) for name in lay.extra_names]
    if flat is not None and lay.leftover.numel():
        ex.append(flat.index_select(1, idx["leftover"]).to(torch.float64))
    extras = torch.cat(ex, dim=1) if ex else torch.zeros(n, 0, dtype=torch.float64, device=dev)

    attrs = {"x": x, ("edge_values" if ragged else "edge_attr"): edge_attr, "extras": extras.reshape(-1)}
    attrs.update(_structure(lay, n, dev, reuse_structure, ragged))
    return attrs, n, _dtype_string(lay, stacked)


_MAX_SHARED = 4


def _structure(lay: GraphLayout, n: int, dev: torch.device, reuse: bool, ragged: bool = False
               ) -> dict[str, torch.Tensor]:
    """The weight-independent attributes of ``n`` graphs (edge_index, masks, kinds, ...).

    With ``reuse`` they are cached on the layout per ``(device, n, format)`` (at
    most a few) and shared by every batch built with ``reuse_structure=True``.
    """
    def build() -> dict[str, torch.Tensor]:
        idx = lay.on(dev)
        offs = torch.arange(n, device=dev) * lay.num_nodes
        edge = {"edge_width": idx["edge_width"].repeat(n)} if ragged else {"edge_mask": idx["edge_mask"].repeat(n, 1)}
        return {
            "x_mask": idx["x_mask"].repeat(n, 1),
            "edge_index": (idx["edge_index"].unsqueeze(1) + offs.view(1, n, 1)).reshape(2, n * lay.num_edges),
            **edge,
            "edge_kind": idx["edge_kind"].repeat(n), "edge_conn": idx["edge_conn"].repeat(n),
            "node_kind": idx["node_kind"].repeat(n), "node_depth": idx["node_depth"].repeat(n),
            "node_group": idx["node_group"].repeat(n), "node_pos": idx["node_pos"].repeat(n),
            "num_extras": torch.full((n,), lay.num_extras, dtype=torch.long, device=dev),
        }

    return lay.shared((str(dev), n, ragged), build, _MAX_SHARED) if reuse else build()


def _copy_blocks(lay: GraphLayout, stacked: Mapping[str, torch.Tensor], n: int, fdt: torch.dtype,
                 dev: torch.device, ragged: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Node features and padded ``edge_attr`` (or ragged ``edge_values``), one strided copy per tensor block.

    Same result as the gather map.
    """
    v, e, k = lay.num_nodes, lay.num_edges, lay.edge_dim
    x = torch.zeros(n, v, NUM_SLOTS, dtype=fdt, device=dev)
    if ragged:
        values = torch.empty(n, lay.num_values, dtype=fdt, device=dev)
        for st in lay.copy_steps:
            canon = to_compact(stacked[st.tensor], st.block).reshape(n, st.stop - st.start, st.width)
            if st.target == "x":
                x[:, st.start:st.stop, st.col] = canon[..., 0]
            else:
                values[:, st.value_start:st.value_stop] = canon.reshape(n, -1)
        return x.view(n * v, NUM_SLOTS), values.view(-1)
    edge = torch.empty(n, e, k, dtype=fdt, device=dev)
    for st in lay.copy_steps:
        canon = to_compact(stacked[st.tensor], st.block).reshape(n, st.stop - st.start, st.width)
        if st.target == "x":
            x[:, st.start:st.stop, st.col] = canon[..., 0]
        else:
            edge[:, st.start:st.stop, : st.width] = canon
            if st.width < k:
                edge[:, st.start:st.stop, st.width:] = 0
    for a, b in lay.identity_ranges:
        edge[:, a:b, 0] = 1
        edge[:, a:b, 1:] = 0
    return x.view(n * v, NUM_SLOTS), edge.view(n * e, k)


def _extra_to_f64(name: str, t: torch.Tensor, n: int) -> torch.Tensor:
    if t.is_complex():
        raise GraphBuildError(f"extra entry '{name}' is complex ({t.dtype}); not supported")
    if not t.is_floating_point() and t.dtype != torch.bool and t.numel() and int(t.abs().max()) > _EXACT_INT:
        raise GraphBuildError(f"extra entry '{name}' ({t.dtype}) holds integers above 2**53, which the float64 "
                              "extras vector cannot store exactly")
    return t.reshape(n, -1).to(torch.float64)


def build(space: WeightSpace, stacked: Mapping[str, torch.Tensor], *, method: str = "copy",
          reuse_structure: bool = False, edges: str = "auto") -> Batch:
    """``N`` models of one architecture (tensors ``(N, *shape)``) -> one PyG ``Batch`` of N graphs.

    The batch behaves like ``Batch.from_data_list`` of :class:`ParameterGraph`
    (``to_data_list()`` works); ``arch`` and ``dtypes`` are per-graph lists.
    ``method="copy"`` (default) writes each tensor block's canonical view into
    its node/edge range (one strided copy per block, all models at once);
    ``method="gather"`` concatenates the flat parameter vectors and applies the
    layout's gather map in one ``index_select``. Both give identical graphs;
    "copy" avoids materialising the flat vectors and is ~2x faster on CPU.

    ``reuse_structure=True`` shares the weight-independent tensors
    (``edge_index``, masks, kind/depth/group/position attributes) between all
    batches of the same size built that way, instead of allocating them anew
    (they are most of the batch's memory). Treat them as read-only then:
    an in-place edit would show up in every such batch.

    ``edges`` chooses the edge storage (:mod:`wsl.graph.ragged`): ``"padded"``
    (``edge_attr``/``edge_mask`` of width ``K``), ``"ragged"``
    (``edge_values``/``edge_width``: memory proportional to the number of
    weights; ``method`` is then ignored) or ``"auto"``: ragged when padding
    would more than double the edge features and they exceed
    :data:`wsl.graph.size.AUTO_RAGGED_BYTES` per graph (e.g. ResNet-18), else padded.
    """
    attrs, n, dts = _assemble(space, stacked, method, reuse_structure, edges)
    lay = GraphLayout.of(space)
    return make_batch(attrs, {"arch": [lay.signature] * n, "dtypes": [dts] * n}, n, lay.num_nodes)


def build_one(space: WeightSpace, state_dict: Mapping[str, torch.Tensor], *, edges: str = "auto") -> ParameterGraph:
    """One state_dict -> one :class:`ParameterGraph` (``edges`` as in :func:`build`)."""
    space.check(state_dict, where="wsl.graph.build_one")
    attrs, _, dts = _assemble(space, {k: v.unsqueeze(0) for k, v in state_dict.items()}, edges=edges)
    g = ParameterGraph(**attrs)
    g.arch = space.signature
    g.dtypes = dts
    return g

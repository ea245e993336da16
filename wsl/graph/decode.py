"""Parameter graphs back to state_dicts, bit-exactly.

:func:`decode` inverts :func:`wsl.graph.build` (dtypes included), for padded
and ragged (:mod:`wsl.graph.ragged`) edge storage alike.
:func:`decode_edges` is the lower-level map from per-node/per-edge values to
tensors, for equivariant heads that predict one value per parameter slot;
:func:`decode_values` does the same from ragged edge values.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Mapping

import torch
from torch_geometric.data import Batch, Data

from wsl.errors import WslError
from wsl.graph.layout import GraphLayout
from wsl.graph.ragged import is_ragged
from wsl.space.axes import from_compact, slice_block
from wsl.space.weightspace import WeightSpace

__all__ = ["decode", "decode_edges", "decode_values"]


class GraphDecodeError(WslError):
    """A graph does not fit the architecture it is decoded against."""


@lru_cache(maxsize=256)
def _parse_dtypes(s: str) -> tuple[torch.dtype, ...]:
    out = []
    for name in s.split(","):
        dt = getattr(torch, name, None)
        if not isinstance(dt, torch.dtype):
            raise GraphDecodeError(f"unknown dtype '{name}' in graph attribute 'dtypes'")
        out.append(dt)
    return tuple(out)


def _dtype_map(lay: GraphLayout, dtypes: str | Mapping[str, torch.dtype] | None) -> dict[str, torch.dtype | None]:
    if dtypes is None:
        return {n: None for n in lay.stored_names}
    if isinstance(dtypes, str):
        dts = _parse_dtypes(dtypes)
        if len(dts) != len(lay.stored_names):
            raise GraphDecodeError(f"'dtypes' lists {len(dts)} tensors, the architecture stores "
                                   f"{len(lay.stored_names)}")
        return dict(zip(lay.stored_names, dts))
    return {n: dtypes.get(n) for n in lay.stored_names}


def _place_values(lay: GraphLayout, main: torch.Tensor, values: torch.Tensor) -> None:
    """Write ragged edge values ``(N, num_values)`` into the flat parameter vectors ``main``, block by block."""
    n = int(main.shape[0])
    offsets = dict(zip(lay.main_names, lay.main_offsets))
    for st in lay.copy_steps:
        if st.target != "edge":
            continue
        shape = lay.shapes[st.tensor]
        full = main[:, offsets[st.tensor]:offsets[st.tensor] + math.prod(shape)].view(n, *shape)
        block = slice_block(full, st.block)
        chunk = values[:, st.value_start:st.value_stop]
        block.copy_(from_compact(chunk.reshape(n, *st.block.compact_unit_shape, st.width), st.block))


def decode_values(space: WeightSpace, x: torch.Tensor | None, edge_values: torch.Tensor | None,
                  extras: torch.Tensor | None = None,
                  dtypes: str | Mapping[str, torch.dtype] | None = None) -> dict[str, torch.Tensor]:
    """:func:`decode_edges` for ragged edge values ``(N, num_values)`` (or ``(num_values,)``)."""
    return decode_edges(space, x, edge_values, extras, dtypes, ragged=True)


def decode_edges(space: WeightSpace, x: torch.Tensor | None, edge_attr: torch.Tensor | None,
                 extras: torch.Tensor | None = None,
                 dtypes: str | Mapping[str, torch.dtype] | None = None, *, ragged: bool = False
                 ) -> dict[str, torch.Tensor]:
    """Node values ``x`` ``(N, V, S)`` and edge values ``edge_attr`` ``(N, E, K')`` -> tensors ``(N, *shape)``.

    Unbatched inputs (``(V, S)``, ``(E, K')``, ``(X,)``) give an unbatched
    state_dict. ``K'`` may exceed the architecture's ``K`` (columns past ``K``
    are ignored, e.g. padding from :func:`~wsl.graph.collate`). Slots without
    a parameter are ignored. ``x``/``edge_attr``/``extras`` may be ``None``:
    the parameters they hold are then zero. ``dtypes`` (the graph's
    ``dtypes`` string or a name->dtype mapping) sets each tensor's dtype;
    otherwise tensors take the dtype of the node/edge values and extras
    keep float64 (or that dtype when ``extras`` is None).
    """
    lay = GraphLayout.of(space)
    ref = next((t for t in (edge_attr, x, extras) if t is not None), None)
    if ref is None:
        raise GraphDecodeError("decode_edges: x, edge_attr and extras are all None")
    unbatched = ref.dim() == (1 if ref is extras or (ragged and ref is edge_attr) else 2)
    if unbatched:
        x = None if x is None else x.unsqueeze(0)
        edge_attr = None if edge_attr is None else edge_attr.unsqueeze(0)
        extras = None if extras is None else extras.unsqueeze(0)
    n = int(ref.shape[0]) if not unbatched else 1
    dev = ref.device
    idx = lay.on(dev)
    v, e, k = lay.num_nodes, lay.num_edges, lay.edge_dim
    vals = [t for t in (x, edge_attr) if t is not None]
    fdt = vals[0].dtype if vals else torch.get_default_dtype()
    for t in vals[1:]:
        fdt = torch.promote_types(fdt, t.dtype)

    main = torch.zeros(n, lay.num_main, dtype=fdt, device=dev)
    if x is not None:
        _expect(x, (n, v, x.shape[-1]), "x")
        if x.shape[-1] != lay.x_mask.shape[1]:
            raise GraphDecodeError(f"x has {x.shape[-1]} node slots, expected {lay.x_mask.shape[1]}")
        main[:, idx["node_src"]] = x.reshape(n, -1).to(fdt).index_select(1, idx["node_real"])
    if edge_attr is not None and ragged:
        _expect(edge_attr, (n, lay.num_values), "edge_values")
        _place_values(lay, main, edge_attr.to(fdt))
    elif edge_attr is not None:
        _expect(edge_attr, (n, e, edge_attr.shape[-1]), "edge_attr")
        kp = int(edge_attr.shape[-1])
        if kp < k:
            raise GraphDecodeError(f"edge_attr has width {kp}, the architecture needs {k}")
        pos = idx["edge_real"]
        if kp != k:
            pos = pos // k * kp + pos % k
        main[:, idx["edge_src"]] = edge_attr.reshape(n, -1).to(fdt).index_select(1, pos)
    nx = lay.extra_offsets[-1]
    if extras is not None:
        _expect(extras, (n, lay.num_extras), "extras")
        if lay.leftover.numel():
            main[:, idx["leftover"]] = extras[:, nx:].to(fdt)
    else:
        extras = torch.zeros(n, lay.num_extras, dtype=fdt, device=dev)

    dmap = _dtype_map(lay, dtypes)
    out: dict[str, torch.Tensor] = {}
    for name, a, b in zip(lay.main_names, lay.main_offsets, lay.main_offsets[1:]):
        t = main[:, a:b].reshape(n, *lay.shapes[name])
        dt = dmap[name]
        out[name] = t.to(dt) if dt is not None else t
    for name, a, b in zip(lay.extra_names, lay.extra_offsets, lay.extra_offsets[1:]):
        t = extras[:, a:b].reshape(n, *lay.shapes[name])
        dt = dmap[name]
        out[name] = t.to(dt) if dt is not None else t.clone()
    for alias, src in lay.aliases:
        out[alias] = out[src]
    res = {name: out[name] for name in lay.order}
    return {k_: t[0] for k_, t in res.items()} if unbatched else res


def _expect(t: torch.Tensor, shape: tuple[int, ...], what: str) -> None:
    if tuple(t.shape) != tuple(int(s) for s in shape):
        raise GraphDecodeError(f"decode: '{what}' has shape {tuple(t.shape)}, the architecture needs {shape}")


def decode(graph: Data, space: WeightSpace) -> dict[str, torch.Tensor]:
    """A :class:`ParameterGraph` -> its state_dict; a one-architecture ``Batch`` -> a stacked state_dict.

    Bit-exact inverse of :func:`~wsl.graph.build`/:func:`~wsl.graph.build_one`
    (values and dtypes). Mixed-architecture batches: split them with
    :func:`~wsl.graph.to_graphs` and decode each graph with its own space.
    """
    lay = GraphLayout.of(space)
    if isinstance(graph, Batch):
        n = int(graph.num_graphs)
        archs, dts = list(graph.arch), list(graph.dtypes)
        bad = sorted({a for a in archs if a != lay.signature})
        if bad:
            raise GraphDecodeError(f"decode: batch holds architectures {bad}, not this space's {lay.signature}; "
                                   "split mixed batches with wsl.graph.to_graphs")
        if len(set(dts)) > 1:
            raise GraphDecodeError("decode: graphs of this batch have different tensor dtypes; "
                                   "decode them one by one (wsl.graph.to_graphs)")
        ragged = is_ragged(graph)
        n_e = int(graph.edge_width.shape[0]) if ragged else int(graph.edge_attr.shape[0])
        if int(graph.x.shape[0]) != n * lay.num_nodes or n_e != n * lay.num_edges:
            raise GraphDecodeError(f"decode: batch of {n} graphs has {graph.x.shape[0]} nodes and "
                                   f"{n_e} edges, expected {lay.num_nodes}/{lay.num_edges} each")
        edges = graph.edge_values.view(n, -1) if ragged else graph.edge_attr.view(n, lay.num_edges, -1)
        return decode_edges(space, graph.x.view(n, lay.num_nodes, -1), edges,
                            graph.extras.view(n, lay.num_extras), dts[0], ragged=ragged)
    arch = getattr(graph, "arch", None)
    if arch != lay.signature:
        raise GraphDecodeError(f"decode: graph of architecture {arch!r} decoded against {lay.signature!r}")
    if is_ragged(graph):
        return decode_values(space, graph.x, graph.edge_values, graph.extras, graph.dtypes)
    return decode_edges(space, graph.x, graph.edge_attr, graph.extras, graph.dtypes)

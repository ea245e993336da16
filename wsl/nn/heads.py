"""Output heads shared by the graph and dense meta-models.

* :class:`MLP` -- a plain multi-layer perceptron (the generic part of every head).
* :func:`pool_nodes` -- per-graph mean / max / sum pooling of node states,
  optionally restricted to some node kinds.
* :class:`InvariantHead` -- ``y_G = MLP([pool_1(h), ..., pool_p(h)])``: one
  vector per graph, invariant to node permutations. Dense models call it with
  an already pooled ``(G, D)`` vector (``index=None``).
* :class:`EquivariantHead` -- per-node ``(V, S)`` and per-edge ``(E, K)`` values
  (new weights or weight updates); :meth:`EquivariantHead.to_state_dicts`
  maps them back to one state_dict per graph through
  :func:`wsl.graph.decode_edges`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from wsl.errors import WslError
from wsl.graph.decode import decode_edges
from wsl.graph.layout import NODE_KINDS, NUM_SLOTS, GraphLayout
from wsl.space.weightspace import WeightSpace

__all__ = ["HeadError", "MLP", "pool_nodes", "InvariantHead", "EquivariantHead", "POOLINGS"]

POOLINGS: tuple[str, ...] = ("mean", "max", "sum")


class HeadError(WslError):
    """A head was configured or called inconsistently (bad pooling, wrong widths, unmatched spaces)."""


class MLP(nn.Sequential):
    """``Linear -> act [-> Dropout] -> ... -> Linear``: ``num_layers`` linear layers (``>= 1``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 128, num_layers: int = 2, dropout: float = 0.0,
                 activation: type[nn.Module] = nn.SiLU) -> None:
        if min(in_dim, out_dim, hidden, num_layers) < 1:
            raise HeadError(f"MLP: sizes must be positive, got in_dim={in_dim}, out_dim={out_dim}, "
                            f"hidden={hidden}, num_layers={num_layers}")
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims, dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < num_layers - 1:
                layers.append(activation())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim


def pool_nodes(h: torch.Tensor, index: torch.Tensor, num_graphs: int, modes: Sequence[str] = ("mean", "max"),
               select: torch.Tensor | None = None) -> torch.Tensor:
    """Pool node states ``h`` (V, D) per graph ``index`` (V,) -> (num_graphs, len(modes) * D).

    ``select`` (V,) bool keeps only some nodes; a graph with no kept node pools to zeros.
    """
    d = h.shape[-1]
    if select is not None:
        h, index = h[select], index[select]
    cnt = torch.zeros(num_graphs, dtype=h.dtype, device=h.device).index_add_(
        0, index, torch.ones_like(index, dtype=h.dtype)).unsqueeze(-1)
    total = torch.zeros(num_graphs, d, dtype=h.dtype, device=h.device).index_add_(0, index, h)
    out = []
    for m in modes:
        if m == "mean":
            out.append(total / cnt.clamp(min=1))
        elif m == "sum":
            out.append(total)
        elif m == "max":
            idx = index.unsqueeze(-1).expand(-1, d)
            out.append(torch.zeros(num_graphs, d, dtype=h.dtype, device=h.device).scatter_reduce(
                0, idx, h, "amax", include_self=False))
        else:
            raise HeadError(f"pool_nodes: unknown pooling '{m}', expected one of {POOLINGS}")
    return torch.cat(out, dim=-1)


class InvariantHead(nn.Module):
    """Pool node states per graph, then an MLP: ``y_G = MLP(concat_p pool_p({h_v : v in G, kind_v in K}))``.

    Args:
        in_dim: width of the node states (or of the pooled vector when ``pooling=()``).
        out_dim: number of outputs per graph.
        hidden, num_layers, dropout: the :class:`MLP`.
        pooling: subset of :data:`POOLINGS`; ``()`` means the input is already pooled.
        node_kinds: pool only nodes of these kinds (names from ``NODE_KINDS`` or codes); None = all.
    """

    def __init__(self, in_dim: int, out_dim: int = 1, hidden: int = 128, num_layers: int = 2,
                 pooling: Sequence[str] = ("mean", "max"), node_kinds: Sequence[str | int] | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        bad = [p for p in pooling if p not in POOLINGS]
        if bad:
            raise HeadError(f"InvariantHead: unknown pooling {bad}, expected a subset of {POOLINGS}")
        self.pooling = tuple(pooling)
        self.node_kinds = None if node_kinds is None else tuple(_kind_code(k) for k in node_kinds)
        self.mlp = MLP(in_dim * max(1, len(self.pooling)), out_dim, hidden, num_layers, dropout)

    def forward(self, h: torch.Tensor, index: torch.Tensor | None = None, node_kind: torch.Tensor | None = None,
                num_graphs: int | None = None) -> torch.Tensor:
        """Node states ``h`` (V, D) with graph ids ``index`` -> (G, out_dim); or a pooled ``h`` (G, D') alone."""
        if index is None:
            if h.shape[-1] != self.mlp.in_dim:
                raise HeadError(f"InvariantHead: pooled input has width {h.shape[-1]}, expected {self.mlp.in_dim}")
            return self.mlp(h)
        if not self.pooling:
            raise HeadError("InvariantHead(pooling=()) expects pooled input; call it without 'index'")
        g = int(index.max()) + 1 if num_graphs is None else num_graphs
        select = None
        if self.node_kinds is not None:
            if node_kind is None:
                raise HeadError("InvariantHead: node_kinds is set, pass node_kind to forward")
            codes = torch.tensor(self.node_kinds, device=node_kind.device)
            select = torch.isin(node_kind, codes)
        return self.mlp(pool_nodes(h, index, g, self.pooling, select))


class EquivariantHead(nn.Module):
    """Per-node and per-edge outputs (one value per parameter slot).

    ``x'_v = MLP_n(h_v)`` (V, S) and ``a'_uv = MLP_e(e_uv)`` (E, K); with
    ``residual=True`` the input graph's ``x``/``edge_attr`` are added (the head
    predicts an update; with ``zero_init`` it starts as the identity map).

    Args:
        node_dim, edge_dim: widths of node and edge states.
        edge_width: ``K`` of the output edge values (>= every decoded architecture's width).
        num_slots: node slots (default ``len(NODE_SLOTS)``).
        hidden, num_layers: the two MLPs.
        residual: add the input parameters to the outputs.
        zero_init: zero the last layers (output = input when ``residual``).
    """

    def __init__(self, node_dim: int, edge_dim: int, edge_width: int, num_slots: int = NUM_SLOTS,
                 hidden: int = 128, num_layers: int = 2, residual: bool = False, zero_init: bool = False) -> None:
        super().__init__()
        self.edge_width, self.num_slots, self.residual = edge_width, num_slots, residual
        self.node_mlp = MLP(node_dim, num_slots, hidden, num_layers)
        self.edge_mlp = MLP(edge_dim, edge_width, hidden, num_layers)
        if zero_init:
            for mlp in (self.node_mlp, self.edge_mlp):
                last = mlp[-1]
                assert isinstance(last, nn.Linear)
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    def forward(self, h: torch.Tensor, e: torch.Tensor, data: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` (V, node_dim), ``e`` (E, edge_dim) -> ``(x' (V, S), edge_attr' (E, K))``."""
        x, a = self.node_mlp(h), self.edge_mlp(e)
        if self.residual:
            if data is None:
                raise HeadError("EquivariantHead(residual=True): pass the input graph as 'data'")
            k = int(data.edge_attr.shape[-1])
            if k > self.edge_width:
                raise HeadError(f"EquivariantHead: input edge_attr width {k} exceeds edge_width={self.edge_width}")
            x = x + data.x.to(x.dtype)
            a = torch.cat([a[:, :k] + data.edge_attr.to(a.dtype), a[:, k:]], dim=-1)
        return x, a

    @staticmethod
    def to_state_dicts(data: Any, spaces: WeightSpace | Sequence[WeightSpace] | Mapping[str, WeightSpace],
                       x: torch.Tensor | None = None, edge_attr: torch.Tensor | None = None,
                       keep_extras: bool = True, cast: bool = False) -> list[dict[str, torch.Tensor]]:
        """Split per-node ``x`` (V, S) / per-edge ``edge_attr`` (E, K') values per graph and decode each.

        ``data`` is the input graph or batch (default values: its own ``x``/``edge_attr``).
        ``spaces``: one space for every graph, one per graph, or a mapping from
        ``space.signature`` to space. ``keep_extras`` copies the graphs'
        ``extras`` (e.g. ``num_batches_tracked``); ``cast`` gives every tensor
        the graph's recorded dtype. Graphs of one architecture are decoded in one call.
        """
        x = data.x if x is None else x
        edge_attr = data.edge_attr if edge_attr is None else edge_attr
        batch = getattr(data, "batch", None)
        g = 1 if batch is None else int(data.num_graphs)
        archs = _as_list(getattr(data, "arch", None), g)
        dts = _as_list(getattr(data, "dtypes", None), g)
        sp = _spaces_per_graph(spaces, archs, g)
        lays = [GraphLayout.of(s) for s in sp]
        nv = torch.tensor([lay.num_nodes for lay in lays])
        ne = torch.tensor([lay.num_edges for lay in lays])
        nx = torch.tensor([lay.num_extras for lay in lays])
        if int(nv.sum()) != x.shape[0] or int(ne.sum()) != edge_attr.shape[0]:
            raise HeadError(f"EquivariantHead.to_state_dicts: {x.shape[0]} nodes / {edge_attr.shape[0]} edges do "
                            f"not match the spaces' {int(nv.sum())} / {int(ne.sum())}")
        v_off, e_off = _starts(nv), _starts(ne)
        extras = getattr(data, "extras", None) if keep_extras else None
        if extras is not None and extras.numel() != int(nx.sum()):
            raise HeadError(f"EquivariantHead.to_state_dicts: batch has {extras.numel()} extras, spaces need "
                            f"{int(nx.sum())}")
        x_off = _starts(nx)
        out: list[dict[str, torch.Tensor] | None] = [None] * g
        by_arch: dict[tuple[int, str | None], list[int]] = {}
        for i, s in enumerate(sp):
            by_arch.setdefault((id(s), dts[i] if cast else None), []).append(i)
        for (_, dt), idx in by_arch.items():
            lay, space = lays[idx[0]], sp[idx[0]]
            xs = torch.stack([x[v_off[i]:v_off[i] + lay.num_nodes] for i in idx])
            es = torch.stack([edge_attr[e_off[i]:e_off[i] + lay.num_edges] for i in idx])
            ex = None if extras is None else torch.stack([extras[x_off[i]:x_off[i] + lay.num_extras] for i in idx])
            dec = decode_edges(space, xs, es, ex, dt)
            for j, i in enumerate(idx):
                out[i] = {k: t[j] for k, t in dec.items()}
        return [d for d in out if d is not None]


def _kind_code(k: str | int) -> int:
    if isinstance(k, int):
        return k
    if k not in NODE_KINDS:
        raise HeadError(f"unknown node kind '{k}', expected one of {sorted(NODE_KINDS)}")
    return NODE_KINDS[k]


def _as_list(v: Any, g: int) -> list[Any]:
    if v is None:
        return [None] * g
    return [v] if isinstance(v, str) else list(v)


def _starts(sizes: torch.Tensor) -> list[int]:
    return (torch.cumsum(sizes, 0) - sizes).tolist()


def _spaces_per_graph(spaces: Any, archs: list[str | None], g: int) -> list[WeightSpace]:
    if isinstance(spaces, WeightSpace):
        sp = [spaces] * g
    elif isinstance(spaces, Mapping):
        missing = sorted({a for a in archs if a not in spaces})
        if missing:
            raise HeadError(f"EquivariantHead.to_state_dicts: no space given for architecture(s) {missing}")
        sp = [spaces[a] for a in archs]
    else:
        sp = list(spaces)
        if len(sp) != g:
            raise HeadError(f"EquivariantHead.to_state_dicts: {len(sp)} spaces for {g} graphs")
    for i, (s, a) in enumerate(zip(sp, archs)):
        if a is not None and s.signature != a:
            raise HeadError(f"EquivariantHead.to_state_dicts: graph {i} has architecture {a}, "
                            f"its space is {s.signature}")
    return sp

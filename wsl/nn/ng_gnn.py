"""NG-GNN layers: message passing with edge updates on parameter graphs.

After Kofinas et al. 2024, "Graph Neural Networks for Learning Equivariant
Representations of Neural Networks": node states ``h`` and edge states ``e``
live on a :class:`~wsl.graph.ParameterGraph` (batch); messages flow along every
edge in *both* directions (forward ``u -> v`` and backward ``v -> u``, with
separate message functions) and are aggregated PNA-style (mean, max, min, std,
each with identity / amplification / attenuation degree scalers). Every
operation is a gather, a per-row MLP or a scatter over the receiving node, so
the layer is equivariant to any node relabelling that maps edges to edges --
in particular to the neuron permutations of the encoded network -- and never
mixes graphs of a batch.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from wsl.errors import WslError

__all__ = ["pna_aggregate", "EdgeUpdate", "NGGNNLayer", "PNA_AGGREGATORS", "PNA_SCALERS"]

PNA_AGGREGATORS: tuple[str, ...] = ("mean", "max", "min", "std")
PNA_SCALERS: tuple[str, ...] = ("identity", "amplification", "attenuation")


class GraphLayerError(WslError):
    """A graph layer was configured or called with inconsistent sizes."""


class _ScatterMaxMin(torch.autograd.Function):
    """Per-receiver max and min of messages; ties share the gradient equally (as ``scatter_reduce``)."""

    @staticmethod
    def forward(ctx: Any, msg: torch.Tensor, index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (num_nodes, msg.shape[-1])
        with warnings.catch_warnings():  # index_reduce is "beta"; it is the fastest exact max on CPU and GPU
            warnings.simplefilter("ignore", UserWarning)
            mx = msg.new_zeros(shape).index_reduce_(0, index, msg, "amax", include_self=False)
            mn = msg.new_zeros(shape).index_reduce_(0, index, msg, "amin", include_self=False)
        ctx.save_for_backward(msg, index, mx, mn)
        return mx, mn

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g_max: torch.Tensor, g_min: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        msg, index, mx, mn = ctx.saved_tensors
        grad: torch.Tensor | None = None
        for red, g in ((mx, g_max), (mn, g_min)):
            if g is None:
                continue
            hit = (red.index_select(0, index) == msg).to(msg.dtype)
            ties = torch.zeros_like(red).index_add_(0, index, hit).clamp_(min=1)
            part = (g / ties).index_select(0, index).mul_(hit)
            grad = part if grad is None else grad.add_(part)
        return grad, None, None


def pna_aggregate(msg: torch.Tensor, index: torch.Tensor, num_nodes: int, avg_log_degree: float = 2.0,
                  aggregators: Sequence[str] = PNA_AGGREGATORS, eps: float = 1e-5) -> torch.Tensor:
    """PNA aggregation of messages ``msg`` (M, C) at receivers ``index`` (M,) -> (num_nodes, 3 A C).

    Aggregators (``A`` of them, a subset of ``mean, max, min, std``; ``std =
    sqrt(relu(E[m^2] - E[m]^2) + eps)``), each multiplied by the degree scalers
    ``1``, ``log(d+1)/delta`` and ``delta/log(max(d,1)+1)`` where ``d`` is the
    receiver's in-degree and ``delta = avg_log_degree``. Nodes without
    messages get zeros.
    """
    bad = [a for a in aggregators if a not in PNA_AGGREGATORS]
    if bad or not aggregators:
        raise GraphLayerError(f"pna_aggregate: aggregators must be a non-empty subset of {PNA_AGGREGATORS}, "
                              f"got {list(aggregators)}")
    c, dt = msg.shape[-1], msg.dtype
    deg = torch.bincount(index, minlength=num_nodes).to(dt).unsqueeze(-1)
    d = deg.clamp(min=1)
    out: dict[str, torch.Tensor] = {}
    if "mean" in aggregators or "std" in aggregators:
        out["mean"] = msg.new_zeros(num_nodes, c).index_add_(0, index, msg) / d
    if "std" in aggregators:
        mean_sq = msg.new_zeros(num_nodes, c).index_add_(0, index, msg * msg) / d
        out["std"] = torch.sqrt(torch.relu(mean_sq - out["mean"] ** 2) + eps) * (deg > 0).to(dt)
    if "max" in aggregators or "min" in aggregators:
        out["max"], out["min"] = _ScatterMaxMin.apply(msg, index, num_nodes)
    agg = torch.cat([out[a] for a in aggregators], dim=-1)
    amp = torch.log(deg + 1) / avg_log_degree
    att = avg_log_degree / torch.log(d + 1)
    return torch.cat([agg, agg * amp, agg * att], dim=-1)


class EdgeUpdate(nn.Module):
    """Edge update ``e'_uv = e_uv + W_2 act(A h_u + B h_v + C f_uv + b)`` (h: source u, destination v).

    ``f = LN(e)`` is passed in by the layer (which also uses it for messages or
    attention). This is ``e + MLP([LN(e), h_u, h_v])`` with the first layer
    split so that ``A h``/``B h`` are computed once per node, then gathered per edge.
    """

    def __init__(self, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.node_proj = nn.Linear(hidden, 2 * hidden, bias=False)
        self.edge_proj = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, e: torch.Tensor, f: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        """Node states ``h`` (V, d), edge states ``e`` and ``f = LN(e)`` (E, d) -> new edge states (E, d)."""
        a, b = self.node_proj(h).chunk(2, dim=-1)
        z = self.edge_proj(f) + a.index_select(0, edge_index[0]) + b.index_select(0, edge_index[1])
        return e + self.drop(self.out(self.act(z)))


class NGGNNLayer(nn.Module):
    """One NG-GNN layer: bidirectional PNA message passing, then an edge update.

    With ``n = LN(h)``, ``f = LN(e)`` and ``act`` = SiLU, for an edge ``u -> v``::

        m^fwd_uv = act(A_f n_v + B_f n_u + C_f f_uv + c_f)    (received by v)
        m^bwd_uv = act(A_b n_u + B_b n_v + C_b f_uv + c_b)    (received by u)
        h'_v     = h_v + U_2 act(U_1 [n_v, PNA_v(m^fwd), PNA_v(m^bwd)])
        e'_uv    = e_uv + W_2 act(A h'_u + B h'_v + C f_uv + b)       (EdgeUpdate)

    ``PNA`` is :func:`pna_aggregate` (aggregators x 3 degree scalers).

    Args:
        hidden: width of node and edge states.
        dropout: dropout after each residual branch.
        avg_log_degree: PNA's ``delta`` (mean ``log(d+1)`` of the graphs; 2.0 fits small CNNs/MLPs).
        aggregators: subset of ``("mean", "max", "min", "std")`` (all by default).
        edge_update: whether to update edge states (False: ``e' = e``, no edge-update parameters).
    """

    def __init__(self, hidden: int, dropout: float = 0.0, avg_log_degree: float = 2.0,
                 aggregators: Sequence[str] = PNA_AGGREGATORS, edge_update: bool = True) -> None:
        super().__init__()
        if hidden < 1 or avg_log_degree <= 0 or not 0 <= dropout < 1:
            raise GraphLayerError(f"NGGNNLayer: need hidden >= 1, avg_log_degree > 0, 0 <= dropout < 1; got "
                                  f"hidden={hidden}, avg_log_degree={avg_log_degree}, dropout={dropout}")
        bad = [a for a in aggregators if a not in PNA_AGGREGATORS]
        if bad or not aggregators:
            raise GraphLayerError(f"NGGNNLayer: aggregators must be a non-empty subset of {PNA_AGGREGATORS}, "
                                  f"got {list(aggregators)}")
        self.hidden, self.delta, self.aggregators = hidden, float(avg_log_degree), tuple(aggregators)
        self.node_norm = nn.LayerNorm(hidden)
        self.msg_recv = nn.Linear(hidden, 2 * hidden, bias=False)  # A_f, A_b
        self.msg_send = nn.Linear(hidden, 2 * hidden, bias=False)  # B_f, B_b
        self.msg_edge = nn.Linear(hidden, 2 * hidden)  # [C_f; C_b], [c_f; c_b]
        naggr = len(self.aggregators) * len(PNA_SCALERS)
        self.update = nn.Sequential(nn.Linear(hidden * (1 + 2 * naggr), hidden), nn.SiLU(),
                                    nn.Linear(hidden, hidden))
        self.act = nn.SiLU()
        self.drop = nn.Dropout(dropout)
        self.edge_norm = nn.LayerNorm(hidden)
        self.edges = EdgeUpdate(hidden, dropout) if edge_update else None

    def forward(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor,
                update_edges: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` (V, hidden), ``e`` (E, hidden), ``edge_index`` (2, E) -> updated ``(h, e)``.

        ``update_edges=False`` skips the edge update (e.g. in the last layer of an invariant model).
        """
        if h.shape[-1] != self.hidden or e.shape[-1] != self.hidden or e.shape[0] != edge_index.shape[1]:
            raise GraphLayerError(f"NGGNNLayer(hidden={self.hidden}): got h {tuple(h.shape)}, e {tuple(e.shape)}, "
                                  f"edge_index {tuple(edge_index.shape)}")
        src, dst = edge_index[0], edge_index[1]
        v = h.shape[0]
        n = self.node_norm(h)
        f = self.edge_norm(e)
        # message 2k is edge k's forward message, 2k+1 its backward one (no copies: plain views);
        # node row 2i holds node i's forward projection, row 2i+1 its backward one
        recv = torch.stack([2 * dst, 2 * src + 1], dim=1).view(-1)
        send = torch.stack([2 * src, 2 * dst + 1], dim=1).view(-1)
        recv_tab = self.msg_recv(n).view(2 * v, -1)
        send_tab = self.msg_send(n).view(2 * v, -1)
        pre = self.msg_edge(f).view(2 * e.shape[0], -1)
        msg = self.act(pre + recv_tab.index_select(0, recv) + send_tab.index_select(0, send))
        agg = pna_aggregate(msg, recv, 2 * v, self.delta, self.aggregators).view(v, -1)
        h = h + self.drop(self.update(torch.cat([n, agg], dim=-1)))
        if self.edges is not None and update_edges:
            e = self.edges(h, e, f, edge_index)
        return h, e


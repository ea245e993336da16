"""NG-T layers: a relational transformer on parameter graphs, with exact batch masking.

Every node attends to every node *of its own graph*. The attention logit and
value of a pair ``(i, j)`` are modulated by the edge(s) between the two nodes
-- an edge ``j -> i`` is seen by ``i`` as *incoming*, an edge ``i -> j`` as
*outgoing* (separate projections); several edges between the same pair add up
-- and by a learned "no edge" embedding for non-adjacent pairs (including
``i == j``).

Exactness. Node states are densified per graph (``(G, N_max, ...)``, graphs
never share a row), and padding keys are masked with ``-inf`` before the
softmax, so their weight is exactly zero: a graph's output does not depend on
which other graphs share the batch (up to float rounding of reductions over a
longer, zero-padded row). The edge terms are computed sparsely (``O(E)``), the
pair terms densely (``O(G N_max^2 H)`` scalars), so no ``N^2 x hidden``
tensor is ever built.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

from wsl.nn.graph_encoding import dense_index
from wsl.nn.ng_gnn import EdgeUpdate, GraphLayerError

__all__ = ["RelationalAttention", "NGTLayer"]


class RelationalAttention(nn.Module):
    """Multi-head attention among the nodes of each graph, modulated by edge states.

    For head ``k`` (dimension ``d``), with ``n = LN(h)``, ``f = LN(e)``::

        q_i = W_q n_i,  k_j = W_k n_j,  v_j = W_v n_j
        r_ij = sum over edges j->i of (K_in f, b_in f, V_in f) + sum over edges i->j of (K_out f, b_out f, V_out f)
               or the learned (k_0, b_0, v_0) when i and j are not adjacent
        s_ij = q_i . (k_j + r^k_ij) / sqrt(d) + r^b_ij         (-inf for keys outside i's graph / padding)
        a_ij = softmax_j(s_ij)
        o_i  = W_o concat_heads( sum_j a_ij (v_j + r^v_ij) )

    Args:
        hidden: node/edge width (divisible by ``heads``).
        heads: number of attention heads.
        dropout: dropout on the output projection.
        mask_padding: keep True. False disables the key-padding mask -- the bug of the
            published implementation -- and exists only so tests can show that it matters.
    """

    def __init__(self, hidden: int, heads: int = 4, dropout: float = 0.0, mask_padding: bool = True) -> None:
        super().__init__()
        if heads < 1 or hidden % heads:
            raise GraphLayerError(f"RelationalAttention: hidden={hidden} is not divisible by heads={heads}")
        self.hidden, self.heads, self.dk = hidden, heads, hidden // heads
        self.mask_padding = mask_padding
        self.qkv = nn.Linear(hidden, 3 * hidden)
        # per direction (incoming, outgoing): key modulation, logit bias, value modulation
        self.rel_k = nn.Linear(hidden, 2 * hidden)
        self.rel_b = nn.Linear(hidden, 2 * heads)
        self.rel_v = nn.Linear(hidden, 2 * hidden)
        self.k0 = nn.Parameter(torch.zeros(heads, self.dk))
        self.b0 = nn.Parameter(torch.zeros(heads))
        self.v0 = nn.Parameter(torch.zeros(heads, self.dk))
        nn.init.normal_(self.k0, std=0.02)
        nn.init.normal_(self.v0, std=0.02)
        self.out = nn.Linear(hidden, hidden)
        self.drop = nn.Dropout(dropout)

    def forward(self, n: torch.Tensor, f: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor,
                num_graphs: int) -> torch.Tensor:
        """Normalized node states ``n`` (V, hidden), edge states ``f`` (E, hidden) -> attention output (V, hidden)."""
        hh, dk = self.heads, self.dk
        v_total, g = n.shape[0], num_graphs
        local, _, nmax = dense_index(batch, g)
        scale = 1.0 / math.sqrt(dk)
        q, k, v = self.qkv(n).view(v_total, 3, hh, dk).unbind(1)
        qd = n.new_zeros(g, nmax, hh, dk).index_put((batch, local), q)
        kd = n.new_zeros(g, nmax, hh, dk).index_put((batch, local), k)
        vd = n.new_zeros(g, nmax, hh, dk).index_put((batch, local), v)
        logits = torch.einsum("gihd,gjhd->ghij", qd, kd) * scale
        no_edge = (torch.einsum("gihd,hd->ghi", qd, self.k0) * scale + self.b0.view(1, hh, 1)).unsqueeze(-1)

        # sparse pair terms: edge u->v is "incoming" for query v (key u) and "outgoing" for query u (key v)
        # pair entry 2k is edge k seen from its destination, 2k+1 from its source (views, no copies)
        src, dst = edge_index[0], edge_index[1]
        qn, kn = torch.stack([dst, src], dim=1).view(-1), torch.stack([src, dst], dim=1).view(-1)
        rk = self.rel_k(f).view(-1, hh, dk)
        rb = self.rel_b(f).view(-1, hh)
        rv = self.rel_v(f).view(-1, hh, dk)
        pair = (batch[qn] * nmax + local[qn]) * nmax + local[kn]
        t = (q.index_select(0, qn) * rk).sum(-1) * scale + rb  # (2E, H)
        cells = g * nmax * nmax
        has = torch.zeros(cells, dtype=torch.bool, device=n.device)
        has[pair] = True
        edge_logits = n.new_zeros(cells, hh).index_add_(0, pair, t)
        has_d = has.view(g, 1, nmax, nmax)
        logits = logits + torch.where(has_d, rearrange(edge_logits, "(g i j) h -> g h i j", g=g, i=nmax), no_edge)
        if self.mask_padding:
            valid = torch.zeros(g, nmax, dtype=torch.bool, device=n.device)
            valid[batch, local] = True
            logits = logits.masked_fill(~valid.view(g, 1, 1, nmax), float("-inf"))
        a = torch.softmax(logits, dim=-1)  # (G, H, N, N)

        o = torch.einsum("ghij,gjhd->gihd", a, vd)
        w0 = (a * (~has_d).to(a.dtype)).sum(-1)  # attention mass on non-adjacent keys (G, H, N)
        o = o + rearrange(w0, "g h i -> g i h 1") * self.v0
        out = o[batch, local]  # (V, H, dk)
        a_pair = rearrange(a, "g h i j -> (g i j) h").index_select(0, pair)
        out = out.index_add(0, qn, a_pair.unsqueeze(-1) * rv)
        return self.drop(self.out(out.reshape(v_total, self.hidden)))


class NGTLayer(nn.Module):
    """One NG-T layer: pre-norm relational attention, feed-forward, edge update::

        h  <- h + RelationalAttention(LN(h), LN(e))
        h  <- h + W_2 act(W_1 LN(h))
        e' =  e + W_2' act(A h_u + B h_v + C LN(e) + b)      (EdgeUpdate, edge u -> v)

    Args:
        hidden: node/edge width.
        heads: attention heads (``hidden % heads == 0``).
        ffn_mult: width multiplier of the feed-forward block.
        dropout: dropout on residual branches.
        edge_update: whether to update edge states (False: no edge-update parameters).
        mask_padding: see :class:`RelationalAttention` (keep True).
    """

    def __init__(self, hidden: int, heads: int = 4, ffn_mult: int = 2, dropout: float = 0.0,
                 edge_update: bool = True, mask_padding: bool = True) -> None:
        super().__init__()
        if hidden < 1 or ffn_mult < 1 or not 0 <= dropout < 1:
            raise GraphLayerError(f"NGTLayer: need hidden >= 1, ffn_mult >= 1, 0 <= dropout < 1; got "
                                  f"hidden={hidden}, ffn_mult={ffn_mult}, dropout={dropout}")
        self.hidden = hidden
        self.node_norm = nn.LayerNorm(hidden)
        self.attn = RelationalAttention(hidden, heads, dropout, mask_padding)
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(nn.Linear(hidden, ffn_mult * hidden), nn.SiLU(), nn.Linear(ffn_mult * hidden, hidden),
                                 nn.Dropout(dropout))
        self.edge_norm = nn.LayerNorm(hidden)
        self.edges = EdgeUpdate(hidden, dropout) if edge_update else None

    def forward(self, h: torch.Tensor, e: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor,
                num_graphs: int, update_edges: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``h`` (V, hidden), ``e`` (E, hidden), ``edge_index`` (2, E), ``batch`` (V,) -> updated ``(h, e)``.

        ``update_edges=False`` skips the edge update (e.g. in the last layer of an invariant model).
        """
        if h.shape[-1] != self.hidden or e.shape[-1] != self.hidden or e.shape[0] != edge_index.shape[1]:
            raise GraphLayerError(f"NGTLayer(hidden={self.hidden}): got h {tuple(h.shape)}, e {tuple(e.shape)}, "
                                  f"edge_index {tuple(edge_index.shape)}")
        if batch.shape[0] != h.shape[0]:
            raise GraphLayerError(f"NGTLayer: batch has {batch.shape[0]} entries for {h.shape[0]} nodes")
        f = self.edge_norm(e)
        h = h + self.attn(self.node_norm(h), f, edge_index, batch, num_graphs)
        h = h + self.ffn(self.ffn_norm(h))
        if self.edges is not None and update_edges:
            e = self.edges(h, e, f, edge_index)
        return h, e

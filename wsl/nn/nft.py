"""NFT: self-attention over the units of each group (after Zhou et al. 2023b).

A neural functional transformer layer for :class:`~wsl.graph.WeightSpaceFeatures`
(block ``b``: ``(N, C_b, *units_b)`` with ``C_b = F_b * c``). Tokens are
*units*: for each group ``g`` every unit gathers one token from all blocks
indexed by ``g``; tokens of a group attend to each other; the result is
broadcast back to every entry of those blocks.

Update (one layer, pre-norm transformer block)
----------------------------------------------
Let ``V_g`` be the (block ``b``, axis ``a``) pairs with ``group(b, a) = g``
and ``n_g = |g|``. Per entry, ``LN`` normalises over the channels of its block.

1. ``T_g = concat_{(b, a) in V_g} LN_{b,a}(mean_{unit axes of b except a}(X_b))``  -- ``(N, n_g, D_g)``
   (one token per unit; ``LN_{b,a}`` normalises each pooled view over its ``C_b`` channels)
2. ``H_g = T_g W^in_g + E_g`` where ``E_g`` is a learned position embedding
   ``(n_g, d)`` if ``g`` is fixed (input/output units) and 0 for permutable
   groups (no positional information, so permutable tokens stay exchangeable)
3. ``O_g = H_g + MHA_g(LNt_g(H_g))`` with ``MHA(H) = concat_h softmax(Q_h K_h^T / sqrt(d_h)) V_h W^O``
   over the ``n_g`` tokens
4. ``X'_b = X_b + sum_{a} Broadcast_{units of b except a}( [O_g W^out_g + beta_g]_{(b, a)} )``
5. ``X''_b = X'_b + MLP_b(LN_b(X'_b))`` with ``MLP_b = Linear(C_b, r C_b) -> GELU -> Linear(r C_b, C_b)``

Every step is pointwise per entry, a mean over other axes, attention without
positional information among exchangeable tokens, or a broadcast, so the
layer is equivariant to every permutation of the permutable groups (nested
groups are handled as plain groups, a larger symmetry). Fixed groups keep
their order through ``E_g``, so the layer respects exactly the network's
symmetry.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from wsl.graph.features import WeightSpaceFeatures, feature_blocks
from wsl.nn.pooling import MetaModelError, channel_linear, check_features, resolve_space, truly_fixed
from wsl.space.weightspace import WeightSpace

__all__ = ["NFTLayer", "BlockLinear"]


class BlockLinear(nn.Module):
    """A separate pointwise ``Linear(F_b * in_channels -> F_b * out_channels)`` per block (equivariant).

    ``BlockLinear(space, in_channels, out_channels)``: the channel lift /
    projection used around NFT layers.
    """

    def __init__(self, space: WeightSpace | Sequence[WeightSpace], in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.space = resolve_space(space)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.keys = [k for k, _ in feature_blocks(self.space)]
        self.maps = nn.ModuleList(nn.Linear(b.feature_size * self.in_channels, b.feature_size * self.out_channels)
                                  for _, b in feature_blocks(self.space))

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        x = check_features(x, self.space, self.in_channels, "BlockLinear")
        blocks = {k: channel_linear(x.blocks[k].movedim(1, -1), m.weight, m.bias).movedim(-1, 1)
                  for k, m in zip(self.keys, self.maps)}
        return WeightSpaceFeatures(x.space, blocks, x.extras)


class NFTLayer(nn.Module):
    """One NFT layer (update equations in the module docstring).

    ``NFTLayer(space, channels, heads=4, token_dim=None, mlp_ratio=2.0, dropout=0.0)``:
    ``channels`` is ``c`` (block ``b`` has ``F_b * c`` channels, kept by the
    layer); ``token_dim`` (default ``max(channels, 2 * heads)`` rounded up to
    a multiple of ``heads``) is the width ``d`` of unit tokens; ``mlp_ratio``
    is ``r``; ``dropout`` applies to attention weights.
    """

    def __init__(self, space: WeightSpace | Sequence[WeightSpace], channels: int, heads: int = 4,
                 token_dim: int | None = None, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.space = resolve_space(space)
        self.channels = int(channels)
        if heads < 1 or channels < 1:
            raise MetaModelError(f"NFTLayer: channels and heads must be >= 1, got {channels}, {heads}")
        d = token_dim if token_dim is not None else -(-max(channels, 2 * heads) // heads) * heads
        if d % heads:
            raise MetaModelError(f"NFTLayer: token_dim {d} is not divisible by heads {heads}")
        self.token_dim, self.heads = d, heads
        fb = feature_blocks(self.space)
        self.keys = [k for k, _ in fb]
        self.ndims = [len(b.unit_groups) for _, b in fb]
        widths = [b.feature_size * self.channels for _, b in fb]
        self.ln = nn.ModuleList(nn.LayerNorm(w) for w in widths)
        hid = [max(1, int(mlp_ratio * w)) for w in widths]
        self.fc1 = nn.ModuleList(nn.Linear(w, h) for w, h in zip(widths, hid))
        self.fc2 = nn.ModuleList(nn.Linear(h, w) for w, h in zip(widths, hid))
        views: dict[int, list[tuple[int, int]]] = {}
        for i, (_, b) in enumerate(fb):
            for a, g in enumerate(b.unit_groups):
                views.setdefault(g, []).append((i, a))
        self.views = dict(sorted(views.items()))
        self.view_ln = nn.ModuleDict({f"g{g}": nn.ModuleList(nn.LayerNorm(widths[i]) for i, _ in vs)
                                      for g, vs in self.views.items()})
        self.splits = {g: [widths[i] for i, _ in vs] for g, vs in self.views.items()}
        self.tok_in = nn.ModuleDict()
        self.tok_ln = nn.ModuleDict()
        self.attn = nn.ModuleDict()
        self.tok_out = nn.ModuleDict()
        self.pos = nn.ParameterDict()
        for g, vs in self.views.items():
            dg = sum(self.splits[g])
            name = f"g{g}"
            self.tok_in[name] = nn.Linear(dg, d)
            self.tok_ln[name] = nn.LayerNorm(d)
            self.attn[name] = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
            self.tok_out[name] = nn.Linear(d, dg)
            if truly_fixed(self.space, g):
                self.pos[name] = nn.Parameter(0.02 * torch.randn(self.space.groups[g].size, d))

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        x = check_features(x, self.space, self.channels, "NFTLayer")
        xs = [x.blocks[k].movedim(1, -1) for k in self.keys]
        upd: list[list[torch.Tensor]] = [[] for _ in xs]
        for g, vs in self.views.items():
            name = f"g{g}"
            toks = []
            for (i, a), ln in zip(vs, self.view_ln[name]):
                other = [1 + o for o in range(self.ndims[i]) if o != a]
                n = math.prod(xs[i].shape[o] for o in other)  # sum * 1/n: a cheaper backward than mean
                toks.append(ln(xs[i].sum(other) * (1.0 / n) if other else xs[i]))
            h = self.tok_in[name](torch.cat(toks, dim=-1) if len(toks) > 1 else toks[0])
            if name in self.pos:
                h = h + self.pos[name]
            q = self.tok_ln[name](h)
            o = h + self.attn[name](q, q, q, need_weights=False)[0]
            for (i, a), u in zip(vs, self.tok_out[name](o).split(self.splits[g], dim=-1)):
                for o_ax in range(self.ndims[i]):
                    if o_ax != a:
                        u = u.unsqueeze(1 + o_ax)
                upd[i].append(u)
        out = {}
        for i, k in enumerate(self.keys):
            y = xs[i] + upd[i][0]
            for u in upd[i][1:]:
                y.add_(u)
            h = nn.functional.gelu(channel_linear(self.ln[i](y), self.fc1[i].weight, self.fc1[i].bias))
            out[k] = (channel_linear(h, self.fc2[i].weight, self.fc2[i].bias) + y).movedim(-1, 1)
        return WeightSpaceFeatures(x.space, out, x.extras)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, token_dim={self.token_dim}, heads={self.heads}, groups={len(self.views)}"

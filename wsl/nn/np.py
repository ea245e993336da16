"""NP layers: linear maps equivariant to permutations of every unit axis.

This is the "NP" layer of DWSNets / Permutation-Equivariant Neural Functionals
(Navon et al. 2023, Zhou et al. 2023), derived generically from the
:class:`~wsl.space.WeightSpace` spec instead of being written per architecture.

Features are :class:`~wsl.graph.WeightSpaceFeatures` of ``N`` models: block
``b`` is a tensor ``(N, F_b * c, *units_b)`` where ``F_b`` is the block's
non-unit size (kernel taps, flattened positions; 1 for Linear weights and
biases) and ``c`` the layer's channel count (channel-major: channel index
``ci * F_b + f``). Raw features from state_dicts have ``c = 1``.

Update (NP)
-----------
For a block ``b`` and a subset ``A`` of its unit axes, let ``P_A(X_b)`` be the
mean of ``X_b`` over the axes *not* in ``A`` (so ``P_all = X_b`` and
``P_{}`` is one vector per model). ``A`` is keyed by the multiset of groups
``S = groups(A)``. For every key ``S`` the layer concatenates, along channels,
every ``P_A(X_b)`` with ``groups(A) = S`` (axes matched by group), and mixes
channels with one learned matrix ``W_S``::

    Y_b = beta_b + sum_{A subset of axes(b)} Broadcast_{axes(b) \\ A}( [ W_S  concat_{(b', A'): groups(A') = S} P_{A'}(X_b') ]_{(b, A)} )

i.e. every (output block, input block) pair gets the terms "pool the input over
its unmatched axes, identify axes of the same group, broadcast over the
unmatched output axes, mix channels". Terms with no matched axis (``S = {}``)
form one global pooled vector per model, mapped once and broadcast
everywhere. For blocks whose groups are distinct this is the complete basis of
equivariant linear maps of Navon et al. / Zhou et al.

NP treats the *fixed* groups (network input/output units) as permutable, so
the layer is equivariant to permutations of every group, which is a larger
group than the network's symmetry; :class:`IOEmbedding` (learned embeddings
indexed by the position within each fixed group, added once at the network
input) breaks the extra symmetry. Nested groups (attention heads, GroupNorm
blocks) are treated as plain groups: a map equivariant to the larger group is
equivariant to the subgroup. A block with two axes of one group (tied, e.g.
a residual stream mapped onto itself) matches those axes in their stored
order; the extra transposed and diagonal terms are omitted, which keeps
equivariance (the basis is merely not complete for such blocks).

Implementation: the term plan (keys, views, channel offsets) is built once per
space; a forward pass pools each block once, runs one channel mix per key and
adds broadcast terms in place. A multi-axis block's identity term and pooling
share one autograd function whose backward writes the input gradient once; on
CPU (float32) its channel mix runs as a oneDNN channels-last 1x1 convolution,
much faster than BLAS ``mm`` for these shapes.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from wsl.graph.features import WeightSpaceFeatures, feature_blocks
from wsl.nn.pooling import (
    FeatureActivation, MetaModelError, activation_fn, as_nchw, channel_linear, check_features, from_nchw, resolve_space,
    use_onednn,
)
from wsl.space.weightspace import WeightSpace

Key = tuple[str, tuple[int, ...]]

__all__ = ["EquivariantLinear", "FeatureActivation", "IOEmbedding", "MetaModelError", "NPLinear", "resolve_space"]


# ------------------------------------------------------------- the plan
@dataclass(frozen=True)
class ReducedBlock:
    """A feature block as the layer sees it: kept unit axes, folded axes in channels."""

    key: Key
    unit_shape: tuple[int, ...]
    kept: tuple[int, ...]
    folded: tuple[int, ...]
    groups: tuple[int, ...]
    feat: int

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(self.unit_shape[a] for a in self.kept)

    def channels(self, c: int) -> int:
        return self.feat * c * math.prod(self.unit_shape[a] for a in self.folded)

    def to_internal(self, t: torch.Tensor) -> torch.Tensor:
        """``(N, C, *units)`` -> ``(N, *kept_sizes, prod(folded) * C)``."""
        order = [2 + a for a in self.kept] + [2 + a for a in self.folded] + [1]
        t = t.permute(0, *order)
        return t.reshape(*t.shape[: 1 + len(self.kept)], -1) if self.folded else t

    def to_external(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_internal` (a view when nothing is folded)."""
        if self.folded:
            t = t.reshape(*t.shape[:-1], *(self.unit_shape[a] for a in self.folded), -1)
        src = list(self.kept) + list(self.folded)
        return t.permute(0, len(src) + 1, *[1 + src.index(a) for a in range(len(src))])


@dataclass
class Term:
    """One channel-mixing matrix: every view whose kept groups form the multiset ``groups``."""

    groups: tuple[int, ...]
    sizes: tuple[int, ...]
    views: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    in_off: list[int] = field(default_factory=list)
    out_off: list[int] = field(default_factory=list)

    @property
    def fast(self) -> bool:
        return len(self.views) == 1 and len(self.views[0][1]) >= 2


def _match(key: tuple[int, ...], groups: tuple[int, ...]) -> tuple[int, ...]:
    """``order[p]``: the index in ``groups`` matched to key axis ``p`` (repeats in stored order)."""
    used: list[int] = []
    for g in key:
        j = next(j for j, h in enumerate(groups) if h == g and j not in used)
        used.append(j)
    return tuple(used)


def build_terms(blocks: Sequence[ReducedBlock], c_in: int, c_out: int) -> list[Term]:
    """Every key with its views ``(block, subset, order)`` and channel offsets."""
    terms: dict[tuple[int, ...], Term] = {}
    for i, rb in enumerate(blocks):
        k = len(rb.groups)
        for r in range(k, -1, -1):
            for subset in itertools.combinations(range(k), r):
                gs = tuple(rb.groups[a] for a in subset)
                term = terms.setdefault(tuple(sorted(gs)), Term(gs, tuple(rb.sizes[a] for a in subset)))
                term.views.append((i, subset, _match(term.groups, gs)))
    for term in terms.values():
        ci = co = 0
        for i, _, _ in term.views:
            term.in_off.append(ci)
            term.out_off.append(co)
            ci += blocks[i].channels(c_in)
            co += blocks[i].channels(c_out)
        term.in_off.append(ci)
        term.out_off.append(co)
    return sorted(terms.values(), key=lambda t: (len(t.groups), t.groups))


def _unview(t: torch.Tensor) -> torch.Tensor:
    """The same memory as a non-view tensor (outputs of a Function must not be views to be updated in place)."""
    if t._base is None:
        return t
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), t.shape, t.stride())


class _PoolLinear(torch.autograd.Function):
    """``(x @ W^T, mean_{d in D_1} x, ..., mean_{d in D_m} x)`` with a single-allocation backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None,
                dims: tuple[tuple[int, ...], ...]) -> tuple[torch.Tensor, ...]:
        ctx.set_materialize_grads(False)
        ctx.dims = dims
        ctx.has_w = weight is not None
        ctx.save_for_backward(x, weight)
        cache: dict[tuple[int, ...], torch.Tensor] = {(): x}
        for d in sorted(set(dims), key=len):
            best = max((b for b in cache if set(b) <= set(d)), key=len)
            cache[d] = cache[best].mean([a for a in d if a not in best], keepdim=True)
        means = tuple(cache[d].squeeze(d) for d in dims)
        if weight is None:
            return means
        if use_onednn(x):
            y = _unview(from_nchw(F.conv2d(as_nchw(x), weight[:, :, None, None]), (*x.shape[:-1], weight.shape[0])))
        else:
            y = F.linear(x, weight)
        return (y,) + means

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        gy, gms = (grads[0], grads[1:]) if ctx.has_w else (None, grads)
        need_x, need_w = ctx.needs_input_grad[0], ctx.has_w and ctx.needs_input_grad[1]
        gx = gw = None
        if gy is not None and use_onednn(x):
            gy = gy.contiguous()
            gx4, gw4, _ = torch.ops.aten.convolution_backward(
                as_nchw(gy), as_nchw(x), weight[:, :, None, None], None, [1, 1], [0, 0], [1, 1], False, [0, 0],
                1, [need_x, need_w, False])
            gx = from_nchw(gx4, x.shape) if need_x else None
            gw = gw4.reshape(weight.shape) if need_w else None
        elif gy is not None:
            gx = torch.matmul(gy, weight) if need_x else None
            gw = gy.reshape(-1, gy.shape[-1]).t().mm(x.reshape(-1, x.shape[-1])) if need_w else None
        if need_x:
            for d, gm in zip(ctx.dims, gms):
                if gm is None:
                    continue
                shape = [1 if a in d else s for a, s in enumerate(x.shape)]
                n = math.prod(x.shape[a] for a in d)
                gm = gm.reshape(shape)
                if gx is None:
                    gx = (gm / n).expand(x.shape).contiguous()
                else:
                    gx.add_(gm, alpha=1.0 / n)
        return gx, gw, None


class EquivariantLinear(nn.Module):
    """Shared engine of :class:`NPLinear` and :class:`~wsl.nn.hnp.HNPLinear` (see module docstring).

    ``fold(space, gid)`` says whether axes of group ``gid`` are folded into the
    channels (index-specific weights) instead of being shared.
    """

    def __init__(self, space: WeightSpace | Sequence[WeightSpace], in_channels: int, out_channels: int,
                 fold: Callable[[WeightSpace, int], bool], activation: str | None = None) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise MetaModelError(f"{type(self).__name__}: channels must be >= 1, got {in_channels}->{out_channels}")
        self.space = resolve_space(space)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.activation = activation
        self._act = activation_fn(activation, inplace=True)
        self.blocks: list[ReducedBlock] = []
        for key, b in feature_blocks(self.space):
            gs = b.unit_groups
            kept = tuple(a for a, g in enumerate(gs) if not fold(self.space, g))
            folded = tuple(a for a in range(len(gs)) if a not in kept)
            self.blocks.append(ReducedBlock(key, b.unit_shape, kept, folded, tuple(gs[a] for a in kept),
                                            b.feature_size))
        self.terms = build_terms(self.blocks, self.in_channels, self.out_channels)
        self.weights = nn.ParameterList([nn.Parameter(torch.empty(t.out_off[-1], t.in_off[-1])) for t in self.terms])
        self.bias = nn.Parameter(torch.empty(self.terms[0].out_off[-1]))
        self._where: dict[tuple[int, tuple[int, ...]], tuple[int, int]] = {
            (v[0], v[1]): (ti, vi) for ti, t in enumerate(self.terms) for vi, v in enumerate(t.views)}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Uniform init with bound ``1/sqrt(fan_in)``, fan_in summed over every term of a block."""
        fan = [0] * len(self.blocks)
        for t in self.terms:
            for i, _, _ in t.views:
                fan[i] += t.in_off[-1]
        with torch.no_grad():
            for t, w in zip(self.terms, self.weights):
                for vi, (i, _, _) in enumerate(t.views):
                    w[t.out_off[vi]:t.out_off[vi + 1]].uniform_(-fan[i] ** -0.5, fan[i] ** -0.5)
            glob = self.terms[0]
            for vi, (i, _, _) in enumerate(glob.views):
                self.bias[glob.out_off[vi]:glob.out_off[vi + 1]].uniform_(-fan[i] ** -0.5, fan[i] ** -0.5)

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        x = check_features(x, self.space, self.in_channels, type(self).__name__)
        xs = [rb.to_internal(x.blocks[rb.key]) for rb in self.blocks]
        views: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
        fast_y: dict[int, torch.Tensor] = {}
        for i, rb in enumerate(self.blocks):
            k = len(rb.groups)
            full = tuple(range(k))
            views[(i, full)] = xs[i]
            if k == 0:
                continue
            subsets = [s for r in range(k) for s in itertools.combinations(range(k), r)]
            dims = tuple(tuple(1 + a for a in range(k) if a not in s) for s in subsets)
            ti, _ = self._where[(i, full)]
            w = self.weights[ti] if self.terms[ti].fast else None
            xi = xs[i].contiguous() if w is not None else xs[i]
            out = _PoolLinear.apply(xi, w, dims)
            if w is not None:
                fast_y[ti], out = out[0], out[1:]
            views.update({(i, s): m for s, m in zip(subsets, out)})
        ys: list[tuple[torch.Tensor, ...]] = []
        for ti, t in enumerate(self.terms):
            if ti in fast_y:
                ys.append((fast_y[ti],))
                continue
            parts = []
            for i, subset, order in t.views:
                v = views[(i, subset)]
                parts.append(v if order == tuple(range(len(order))) else v.permute(0, *[1 + o for o in order], -1))
            p = torch.cat(parts, dim=-1) if len(parts) > 1 else parts[0]
            y = channel_linear(p, self.weights[ti], self.bias if ti == 0 else None)
            # one split (a single backward node) rather than a slice per view
            ys.append(y.split(list(map(int.__sub__, t.out_off[1:], t.out_off[:-1])), dim=-1) if len(t.views) > 1
                      else (y,))
        out_blocks = {}
        for i, rb in enumerate(self.blocks):
            out_blocks[rb.key] = rb.to_external(self._assemble(i, rb, ys))
        return WeightSpaceFeatures(x.space, out_blocks, x.extras)

    def _contribution(self, i: int, subset: tuple[int, ...], ys: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        """Term output for view ``(i, subset)``, in block axis order, broadcastable to the block."""
        ti, vi = self._where[(i, subset)]
        t = self.terms[ti]
        y = ys[ti][vi]
        order = t.views[vi][2]
        if order != tuple(range(len(order))):
            inv = [0] * len(order)
            for p, j in enumerate(order):
                inv[j] = p
            y = y.permute(0, *[1 + p for p in inv], -1)
        for a in range(len(self.blocks[i].groups)):
            if a not in subset:
                y = y.unsqueeze(1 + a)
        return y

    def _assemble(self, i: int, rb: ReducedBlock, ys: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
        k = len(rb.groups)
        full = tuple(range(k))
        if k == 0:
            return self._act(self._contribution(i, full, ys).clone())
        acc: dict[tuple[int, ...], torch.Tensor] = {}
        for r in range(k - 1):
            for s in itertools.combinations(range(k), r):
                c = acc.pop(s, None)
                c = self._contribution(i, s, ys) if c is None else c + self._contribution(i, s, ys)
                sup = tuple(sorted(s + (next(a for a in range(k) if a not in s),)))
                acc[sup] = c if sup not in acc else acc[sup] + c
        out = self._contribution(i, full, ys)
        owned = len(self.terms[self._where[(i, full)][0]].views) == 1 and out._base is None
        for s in itertools.combinations(range(k), k - 1):
            c = self._contribution(i, s, ys) if s not in acc else acc[s] + self._contribution(i, s, ys)
            if owned:
                out.add_(c)
            else:
                out, owned = out + c, True
        return self._act(out)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}->{self.out_channels}, {len(self.blocks)} blocks, {len(self.terms)} terms, "
                f"activation={self.activation}")


class NPLinear(EquivariantLinear):
    """NP layer: equivariant to permutations of *every* group, fixed ones included.

    ``NPLinear(space, in_channels, out_channels, activation=None)``; block ``b``
    has ``F_b * in_channels`` input and ``F_b * out_channels`` output channels.
    ``activation`` (``"relu"``, ``"gelu"``, ...) is fused and applied in place.
    Update equation: see :mod:`wsl.nn.np`. Use :class:`IOEmbedding` at the
    network input to break the symmetry of the fixed (input/output) groups.
    """

    def __init__(self, space: WeightSpace | Sequence[WeightSpace], in_channels: int, out_channels: int,
                 activation: str | None = None) -> None:
        super().__init__(space, in_channels, out_channels, fold=lambda s, g: False, activation=activation)


class IOEmbedding(nn.Module):
    """Learned embeddings of the positions within fixed groups, added to the features.

    For every block axis indexed by a fixed group ``g`` (network input or
    output units) a table ``E`` of shape ``(F_b * channels, |g|)`` is added:
    ``X_b[:, :, ..., j, ...] += E[:, j]``. Put it before :class:`NPLinear`
    layers: it makes the NP network distinguish input/output positions, so the
    whole network respects exactly the architecture's symmetry.
    """

    def __init__(self, space: WeightSpace | Sequence[WeightSpace], channels: int = 1, init_std: float = 1.0) -> None:
        super().__init__()
        self.space = resolve_space(space)
        self.channels = int(channels)
        self.tables = nn.ParameterDict()
        self._sites: list[tuple[Key, int, str]] = []
        for bi, (key, b) in enumerate(feature_blocks(self.space)):
            for a, g in enumerate(b.unit_groups):
                if self.space.groups[g].fixed:
                    name = f"b{bi}_a{a}"
                    self.tables[name] = nn.Parameter(torch.randn(b.feature_size * self.channels, b.unit_shape[a])
                                                     * init_std)
                    self._sites.append((key, a, name))

    def forward(self, x: WeightSpaceFeatures) -> WeightSpaceFeatures:
        x = check_features(x, self.space, self.channels, "IOEmbedding")
        blocks = dict(x.blocks)
        for key, a, name in self._sites:
            t = blocks[key]
            shape = [1] * t.dim()
            shape[1], shape[2 + a] = self.tables[name].shape
            blocks[key] = t + self.tables[name].view(shape)
        return WeightSpaceFeatures(x.space, blocks, x.extras)

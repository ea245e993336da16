"""Coordinates of every weight of a network, from its WeightSpace.

Each entry ``w[o, i, t...]`` of a state_dict tensor gets a coordinate made of

* ``tensor`` -- the tensor's id (its position in the spec; learned embedding,
  never a number a perturbation could move to another layer);
* ``u_out, u_in`` -- normalised positions of its output and input units inside
  their groups, ``index / (size - 1)`` in ``[0, 1]`` (``0.5`` for a group of
  one unit, and for a missing axis: biases and norm parameters have no input
  unit). Every width samples the same continuum ``[0, 1]``;
* ``tap`` -- the flat position of the entry inside the tensor's non-unit
  factors (kernel taps ``kh * kw``); a conv kernel is produced as one vector
  per ``(o, i)`` pair, so the coordinate itself holds only ``(o, i)``;
* ``w_out, w_in`` -- the widths as ratios ``size / base size`` of the two
  groups (``1`` for fixed groups).

**Nested groups** (attention heads: a query/key or value group of ``H * d``
units nested in a head group of ``H`` units, unit ``i`` = head ``i // d``,
within-head unit ``i % d``, see :mod:`wsl.space.spec`). A unit gets its
position at each nesting level: ``u = (i // d) / (H - 1)`` (the head's position
among the heads) and ``v = (i % d) / (d - 1)`` (its position inside the head),
each ``1/2`` for a level of one. Networks with a nested unit axis get four
more columns :data:`NESTED` = ``(v_out, v_in, x_out, x_in)`` with
``x = d / d_base`` the within-head width ratio; ``w`` stays the ratio of the
whole group, ``w = H d / (H_0 d_0)``, so the fan-in scaling ``1 / w_in`` of
NeuMeta still divides by the number of summed inputs. Non-nested axes of such
a network have ``v = 1/2, x = 1``. Whether a member has fewer heads or fewer
units per head, its units sample the same square ``[0, 1]^2``. Networks
without nested axes keep exactly the four columns (their rows are unchanged).
Deeper nesting (a group nested in a nested group), fused axes (q/k/v
segments of one projection) and grouped convolutions are refused with
:class:`~wsl.errors.SpaceMismatchError`.

Coordinates are built per *row*: one row per ``(o, i)`` pair (or per ``o`` for
one-axis tensors), with the tensor's ``taps`` values as one output vector.
:func:`network_coords` builds every row of a network at some width with one
vectorised expression per tensor (no loop over weights).

The continuous part ``c = (u_out, u_in, w_out, w_in)`` is encoded with random-
free Fourier features ``[c, sin(2^k pi c), cos(2^k pi c)]`` for
``k = 0..F-1`` (:func:`fourier`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from wsl.errors import SpaceMismatchError
from wsl.space import WeightSpace

CONTINUOUS = ("u_out", "u_in", "w_out", "w_in")
"""Names of the columns of :attr:`NetCoords.cont`."""

NESTED = ("v_out", "v_in", "x_out", "x_in")
"""Names of the four further columns of networks with nested unit axes (within-head positions and widths)."""


@dataclass(frozen=True)
class TensorLayout:
    """How a tensor's entries become coordinate rows.

    ``out_group``/``in_group`` are group ids (``None`` when the axis is absent);
    ``taps`` is the product of the sizes of the non-unit factors.
    """

    name: str
    shape: tuple[int, ...]
    out_group: int | None
    in_group: int | None
    taps: int

    @property
    def rows(self) -> int:
        return math.prod(self.shape) // self.taps


def tensor_layout(space: WeightSpace, index: int) -> TensorLayout:
    """Layout of tensor ``index``: axis 0 = output units, axis 1 = input units, rest = taps.

    Leading axes of size 1 that index no units are skipped first (a ViT's
    ``cls_token`` ``(1, 1, D)`` is a ``(token, residual)`` matrix).

    Fused axes (several segments) and axes made of several unit factors are
    refused: they have no single unit position.
    """
    t = space.spec.tensors[index]
    if t.diagonal:
        raise SpaceMismatchError(f"hyper coords: tensor {t.name} is a grouped (block-diagonal) weight; not supported")
    groups: list[int | None] = []
    taps = 1
    lead = 0  # leading axes of size 1 without units (ViT's cls_token (1, 1, D), position_embeddings (1, N, D))
    while lead < len(t.axes) - 1 and t.shape[lead] == 1 and all(f[0] is None for seg in t.axes[lead] for f in seg):
        lead += 1
    for a, ax in enumerate(t.axes[lead:]):
        if len(ax) != 1:
            raise SpaceMismatchError(f"hyper coords: tensor {t.name} axis {lead + a} is fused ({len(ax)} segments); "
                                     "not supported")
        unit = [f for f in ax[0] if f[0] is not None]
        if a < 2:
            if len(unit) > 1 or (len(unit) == 1 and len(ax[0]) > 1):
                raise SpaceMismatchError(f"hyper coords: tensor {t.name} axis {lead + a} mixes unit and position "
                                         "factors (e.g. a flatten); not supported")
            groups.append(unit[0][0] if unit else None)
            if not unit:
                taps *= t.shape[lead + a]
        else:
            if unit:
                raise SpaceMismatchError(f"hyper coords: tensor {t.name} axis {lead + a} indexes units; "
                                         "only the first two axes (after leading size-1 axes) may")
            taps *= t.shape[lead + a]
    while len(groups) < 2:
        groups.append(None)
    return TensorLayout(t.name, tuple(t.shape), groups[0], groups[1], taps)


@dataclass(frozen=True)
class NetCoords:
    """Every coordinate row of one network: tensor ids, continuous parts, and where rows go.

    ``tensor`` (R,) int64 (the tensor's index in the spec), ``cont`` (R, 4) float
    in the order of :data:`CONTINUOUS` (R, 8 with :data:`NESTED` appended when
    the network has nested unit axes), ``offsets`` the first row of each entry
    of ``layouts`` (length + 1). Buffers (BatchNorm statistics) have no rows.
    """

    layouts: tuple[TensorLayout, ...]
    tensor: torch.Tensor
    cont: torch.Tensor
    offsets: tuple[int, ...]
    group_sizes: tuple[int, ...] = ()
    """Size of every group of the network (by group id)."""

    def split(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Rows ``(R, taps_max)`` of generated values -> state_dict (tensor ``k`` keeps its first taps)."""
        out = {}
        for k, lay in enumerate(self.layouts):
            block = values[self.offsets[k]:self.offsets[k + 1], :lay.taps]
            out[lay.name] = block.reshape(lay.shape)
        return out


def _positions(size: int) -> torch.Tensor:
    if size == 1:
        return torch.full((1,), 0.5)
    return torch.arange(size, dtype=torch.float32) / (size - 1)


STATISTICS = ("running_mean", "running_var")
"""Roles of the normalisation statistics that ``network_coords(..., statistics=True)`` gives rows."""


def _generated(space: WeightSpace, statistics: bool) -> list[int]:
    return [k for k, t in enumerate(space.spec.tensors) if not t.buffer or (statistics and t.role in STATISTICS)]


def is_nested(space: WeightSpace, statistics: bool = False) -> bool:
    """Whether some generated tensor has a unit axis indexed by a nested group (then coordinates have 8 columns)."""
    groups = space.spec.groups
    for k in _generated(space, statistics):
        lay = tensor_layout(space, k)
        if any(g is not None and groups[g].parent is not None for g in (lay.out_group, lay.in_group)):
            return True
    return False


def coord_columns(space: WeightSpace, statistics: bool = False) -> int:
    """Number of continuous columns of the network's coordinates: 4, or 8 with nested unit axes."""
    return len(CONTINUOUS) + (len(NESTED) if is_nested(space, statistics) else 0)


def _axis(space: WeightSpace, base: WeightSpace, g: int | None) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """``(u, v, w, x)`` of one unit axis: positions per unit at both levels, whole and within-head width ratios."""
    if g is None:
        return torch.full((1,), 0.5), torch.full((1,), 0.5), 1.0, 1.0
    gs, gb = space.spec.groups, base.spec.groups
    n, w = gs[g].size, gs[g].size / gb[g].size
    p = gs[g].parent
    if p is None:
        return _positions(n), torch.full((n,), 0.5), w, 1.0
    if gs[p].parent is not None:
        raise SpaceMismatchError(f"hyper coords: group {gs[g].name} is nested two levels deep; not supported")
    heads, d = gs[p].size, n // gs[p].size
    if heads * d != n:
        raise SpaceMismatchError(f"hyper coords: group {gs[g].name} ({n} units) is not {heads} equal blocks")
    d_base = gb[g].size // gb[p].size
    return _positions(heads).repeat_interleave(d), _positions(d).repeat(heads), w, d / d_base


def network_coords(space: WeightSpace, base: WeightSpace, statistics: bool = False) -> NetCoords:
    """Coordinates of every weight of ``space`` (a width-family member of ``base``).

    Group ``g`` of ``space`` must be group ``g`` of ``base`` (same count and kinds);
    widths are ``size / base size`` per group. Buffers get no rows, except the
    BatchNorm running statistics when ``statistics`` (per output unit, like biases).
    Rows are ``(u_out, u_in, w_out, w_in)``, plus ``(v_out, v_in, x_out, x_in)`` when
    the network has nested unit axes (module docstring).
    """
    gs, gb = space.spec.groups, base.spec.groups
    if len(gs) != len(gb) or len(space.spec.tensors) != len(base.spec.tensors):
        raise SpaceMismatchError(f"hyper coords: network has {len(gs)} groups / {len(space.spec.tensors)} tensors, "
                                 f"base has {len(gb)} / {len(base.spec.tensors)}; not a member of its width family")
    nested = is_nested(space, statistics)
    layouts, tids, conts, offsets = [], [], [], [0]
    for k in _generated(space, statistics):  # BatchNorm statistics are recomputed, not generated (unless statistics)
        lay = tensor_layout(space, k)
        if lay.out_group is None and lay.shape:
            raise SpaceMismatchError(f"hyper coords: tensor {lay.name} has no output unit axis")
        uo, vo, wo, xo = _axis(space, base, lay.out_group)
        ui, vi, wi, xi = _axis(space, base, lay.in_group)
        n = uo.numel() * ui.numel()
        if n != lay.rows:
            raise SpaceMismatchError(f"hyper coords: tensor {lay.name} has {lay.rows} rows but its groups give {n}")
        cols = [uo[:, None].expand(-1, ui.numel()), ui[None, :].expand(uo.numel(), -1), wo, wi]
        if nested:
            cols += [vo[:, None].expand(-1, vi.numel()), vi[None, :].expand(vo.numel(), -1), xo, xi]
        cont = torch.stack([c.reshape(-1) if isinstance(c, torch.Tensor) else torch.full((n,), c) for c in cols], 1)
        layouts.append(lay)
        tids.append(torch.full((n,), k, dtype=torch.long))
        conts.append(cont)
        offsets.append(offsets[-1] + n)
    return NetCoords(tuple(layouts), torch.cat(tids), torch.cat(conts), tuple(offsets), tuple(g.size for g in gs))


def target_rows(state: dict[str, torch.Tensor], coords: NetCoords, taps_max: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values (R, taps_max), mask (R, taps_max))`` of a state_dict laid out as coordinate rows."""
    vals = torch.zeros(coords.offsets[-1], taps_max)
    mask = torch.zeros(coords.offsets[-1], taps_max, dtype=torch.bool)
    for k, lay in enumerate(coords.layouts):
        if lay.name not in state:
            raise SpaceMismatchError(f"hyper coords: state_dict has no tensor {lay.name}")
        t = state[lay.name]
        if tuple(t.shape) != lay.shape:
            raise SpaceMismatchError(f"hyper coords: {lay.name} has shape {tuple(t.shape)}, expected {lay.shape}")
        a, b = coords.offsets[k], coords.offsets[k + 1]
        vals[a:b, :lay.taps] = t.detach().float().reshape(b - a, lay.taps)
        mask[a:b, :lay.taps] = True
    return vals, mask


def fourier(cont: torch.Tensor, frequencies: int) -> torch.Tensor:
    """``[c, sin(2^k pi c), cos(2^k pi c)]_{k<F}`` per column: ``(R, C) -> (R, C (1 + 2F))``."""
    if frequencies <= 0:
        return cont
    scales = (2.0 ** torch.arange(frequencies, dtype=cont.dtype, device=cont.device)) * math.pi
    ang = cont.unsqueeze(-1) * scales  # (R, C, F)
    return torch.cat([cont, torch.sin(ang).flatten(1), torch.cos(ang).flatten(1)], dim=1)

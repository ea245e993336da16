"""The weight-space symmetry spec: which axes of which tensors are permuted together.

Vocabulary
----------
*Group*
    A set of interchangeable units (hidden neurons of a Linear layer, channels of
    a conv, the residual stream of a transformer, ...). Permuting the units of a
    group -- consistently in every tensor axis the group indexes -- leaves the
    network's function unchanged. The network's input and output units form
    *fixed* groups: they are units (they become graph nodes) but may not be
    permuted. A group may be *nested* in a parent group: its units come in
    ``parent.size`` contiguous blocks and a permutation moves whole blocks by the
    parent's permutation and then permutes units independently inside each
    block. Attention heads (units permute within a head, heads permute as a
    whole) and GroupNorm groups are nested groups.
*Factor*
    ``(group_id, size)`` or ``(None, size)``. A tensor axis is a row-major
    product of factors: the input axis of a Linear layer that follows a flatten
    of ``C`` channels over ``H*W`` positions is ``((g, C), (None, H*W))``.
    Factors with ``None`` are never permuted (kernel taps, flattened positions).
*Segment*
    A tuple of factors. An axis is a concatenation of segments; almost every
    axis has one segment. Fused projections (``c_attn`` of GPT-2, the
    ``in_proj_weight`` of ``nn.MultiheadAttention``) have an output axis with
    three segments (q, k and v).
*Diagonal axis*
    ``TensorSpec.diagonal`` lists ``(axis, base, blocks)``: tensor axis
    ``axis`` holds only the units of one of ``blocks`` blocks of its group,
    the block its index along axis ``base`` falls in. The weight of a grouped
    convolution (``groups=G``, shape ``(out, in/G, k...)``) is the compact
    form of a block-diagonal ``(out, in, k...)`` matrix: its axis 1 is the
    factor ``(g_in, in/G)`` with ``diagonal=((1, 0, G),)``. Both unit groups
    are nested in one block group of size ``G`` (see
    :mod:`wsl.space.diagonal`).
*Site*
    A place in the dataflow holding a set of units, indexed by one group. Sites
    become node sets of the parameter graph. Several sites may share a group
    (every residual-stream site of a transformer shares one group).
*Connection*
    A weight tensor (or block of one) connecting two sites: its two unit axes
    index the source and destination sites; its remaining factors are edge
    features (e.g. the ``kh*kw`` kernel taps). Identity connections carry no
    tensor (residual additions, elementwise products, attention pairings).
*NodeParam*
    A one-axis tensor attached to a site as a node feature: biases and the
    parameters and statistics of normalization layers.

The spec is pure data (hashable dataclasses) and serializes to JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Sequence

Factor = tuple[int | None, int]
Segment = tuple[Factor, ...]
Axis = tuple[Segment, ...]

#: Node feature slots, in the order the parameter graph stores them.
NODE_SLOTS: tuple[str, ...] = ("bias", "norm_scale", "norm_shift", "running_mean", "running_var", "scale")


@dataclass(frozen=True)
class Group:
    """A set of interchangeable units (see module docstring)."""

    id: int
    size: int
    kind: str
    name: str
    fixed: bool = False
    parent: int | None = None

    @property
    def permutable(self) -> bool:
        return not self.fixed


@dataclass(frozen=True)
class TensorSpec:
    """One entry of the state_dict: its shape, role and per-axis structure."""

    name: str
    shape: tuple[int, ...]
    role: str
    module: str
    op: str
    axes: tuple[Axis, ...]
    buffer: bool = False
    diagonal: tuple[tuple[int, int, int], ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def groups(self) -> list[int]:
        """Ids of every group that indexes some axis of this tensor (with repeats)."""
        return [f[0] for ax in self.axes for seg in ax for f in seg if f[0] is not None]

    def blocks(self) -> Iterator["Block"]:
        """Split fused axes: one :class:`Block` per combination of segments."""
        yield from _blocks(self)


@dataclass(frozen=True)
class Block:
    """A rectangular piece of a tensor in which every axis has a single segment.

    ``index`` selects the block (``slices[i]`` is ``(start, stop)`` on axis i).
    ``axes[i]`` are the factors of axis i inside the block. ``diagonal`` is the
    tensor's (see :class:`TensorSpec`): its canonical view is the expanded
    block-diagonal one, :attr:`unit_shape` the expanded sizes and
    :attr:`compact_unit_shape` the stored ones.
    """

    tensor: str
    part: tuple[int, ...]
    slices: tuple[tuple[int, int], ...]
    axes: tuple[Segment, ...]
    diagonal: tuple[tuple[int, int, int], ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.slices)

    @property
    def unit_groups(self) -> tuple[int, ...]:
        """Groups of the unit axes of the canonical view, in axis order."""
        return tuple(f[0] for seg in self.axes for f in seg if f[0] is not None)

    @property
    def unit_shape(self) -> tuple[int, ...]:
        """Sizes of the unit axes of the canonical view (a diagonal axis counts all its group's units)."""
        mult = {a: nb for a, _, nb in self.diagonal}
        return tuple(f[1] * mult.get(a, 1) for a, seg in enumerate(self.axes) for f in seg if f[0] is not None)

    @property
    def compact_unit_shape(self) -> tuple[int, ...]:
        """Sizes of the unit axes as stored (a diagonal axis counts one block's units)."""
        return tuple(f[1] for seg in self.axes for f in seg if f[0] is not None)

    @property
    def feature_size(self) -> int:
        """Product of the sizes of the non-unit factors (edge/feature width)."""
        return math.prod(f[1] for seg in self.axes for f in seg if f[0] is None)


@dataclass(frozen=True)
class Site:
    """A set of units in the dataflow (a node set of the parameter graph)."""

    id: int
    group: int
    name: str
    kind: str
    depth: int


@dataclass(frozen=True)
class Connection:
    """Edges between two sites, carried by a tensor block or by nothing (identity).

    ``src_axis`` and ``dst_axis`` index the unit axes of the block's canonical
    view (see :meth:`Block.unit_groups`). For a depthwise conv both are 0
    (one-to-one edges). For identity-like kinds ``tensor`` is ``None`` and the
    edges pair unit ``i`` of ``src`` with unit ``i`` of ``dst``
    (``"residual"``, ``"product"``, ``"attn_qk"``) or, for ``"attn_kv"``, every
    unit of a head with every unit of the same head.
    """

    kind: str
    src: int
    dst: int
    module: str
    tensor: str | None = None
    part: tuple[int, ...] = ()
    src_axis: int = 1
    dst_axis: int = 0
    attrs: tuple[tuple[str, Any], ...] = ()

    def attr(self, key: str, default: Any = None) -> Any:
        return dict(self.attrs).get(key, default)


@dataclass(frozen=True)
class NodeParam:
    """A one-axis tensor block stored as node feature ``slot`` of a site."""

    site: int
    slot: str
    tensor: str
    part: tuple[int, ...] = ()


@dataclass(frozen=True)
class WeightSpaceSpec:
    """Everything :class:`~wsl.space.WeightSpace` knows, as plain data."""

    tensors: tuple[TensorSpec, ...]
    groups: tuple[Group, ...]
    sites: tuple[Site, ...]
    connections: tuple[Connection, ...]
    node_params: tuple[NodeParam, ...]
    extras: tuple[str, ...] = ()
    aliases: tuple[tuple[str, str], ...] = ()
    meta: tuple[tuple[str, Any], ...] = field(default=())

    def to_json_dict(self) -> dict[str, Any]:
        d = _jsonable(asdict(self))
        for t in d["tensors"]:  # absent when empty: specs without diagonal axes keep their signature
            if not t["diagonal"]:
                del t["diagonal"]
        return d  # type: ignore[no-any-return]

    @staticmethod
    def from_json_dict(d: dict[str, Any]) -> "WeightSpaceSpec":
        def axes(a: Any) -> tuple[Axis, ...]:
            return tuple(tuple(tuple((f[0], int(f[1])) for f in seg) for seg in ax) for ax in a)

        return WeightSpaceSpec(
            tensors=tuple(
                TensorSpec(
                    name=t["name"], shape=tuple(t["shape"]), role=t["role"], module=t["module"],
                    op=t["op"], axes=axes(t["axes"]), buffer=bool(t["buffer"]),
                    diagonal=tuple(tuple(int(v) for v in dg) for dg in t.get("diagonal", ())),  # type: ignore[misc]
                )
                for t in d["tensors"]
            ),
            groups=tuple(Group(**g) for g in d["groups"]),
            sites=tuple(Site(**s) for s in d["sites"]),
            connections=tuple(
                Connection(
                    kind=c["kind"], src=c["src"], dst=c["dst"], module=c["module"], tensor=c["tensor"],
                    part=tuple(c["part"]), src_axis=c["src_axis"], dst_axis=c["dst_axis"],
                    attrs=tuple((k, _tuplify(v)) for k, v in c["attrs"]),
                )
                for c in d["connections"]
            ),
            node_params=tuple(
                NodeParam(site=p["site"], slot=p["slot"], tensor=p["tensor"], part=tuple(p["part"]))
                for p in d["node_params"]
            ),
            extras=tuple(d.get("extras", ())),
            aliases=tuple(tuple(a) for a in d.get("aliases", ())),  # type: ignore[misc]
            meta=tuple((k, _tuplify(v)) for k, v in d.get("meta", ())),
        )

    def signature(self) -> str:
        """A short hash of the weight-space structure (tensors, groups, sites, edges).

        ``meta`` (example input shapes, activations seen, ...) is left out: two
        networks that differ only in parameter-free elementwise layers (relu
        vs tanh) share a signature, graph layout and dense meta-model.
        """
        d = self.to_json_dict()
        d.pop("meta", None)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def _tuplify(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_tuplify(v) for v in x)
    return x


def axis_size(axis: Axis) -> int:
    return sum(math.prod(f[1] for f in seg) for seg in axis)


def _blocks(t: TensorSpec) -> Iterator[Block]:
    per_axis: list[list[tuple[int, tuple[int, int], Segment]]] = []
    for ax in t.axes:
        opts = []
        start = 0
        for si, seg in enumerate(ax):
            n = math.prod(f[1] for f in seg)
            opts.append((si, (start, start + n), seg))
            start += n
        per_axis.append(opts)
    for combo in _product(per_axis):
        yield Block(
            tensor=t.name,
            part=tuple(c[0] for c in combo),
            slices=tuple(c[1] for c in combo),
            axes=tuple(c[2] for c in combo),
            diagonal=t.diagonal,
        )


def _product(lists: Sequence[list[Any]]) -> Iterator[tuple[Any, ...]]:
    if not lists:
        yield ()
        return
    for head in lists[0]:
        for tail in _product(lists[1:]):
            yield (head,) + tail

"""Incremental construction of a :class:`~wsl.space.spec.WeightSpaceSpec`.

The tracer walks a network's dataflow and tells a :class:`SpecBuilder` what
it sees: new unit groups, sites, weight tensors, ties between groups
(residual additions), nesting (attention heads, GroupNorm groups). Groups are
kept in a union-find structure; :meth:`SpecBuilder.finish` resolves it into
the final, renumbered, immutable spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from wsl.errors import TraceError, UnsupportedLayerError
from wsl.space.spec import (
    NODE_SLOTS,
    Axis,
    Connection,
    Factor,
    Group,
    NodeParam,
    Site,
    TensorSpec,
    WeightSpaceSpec,
)


@dataclass
class Val:
    """What the tracer knows about one tensor flowing through the network.

    ``site``/``fdim``/``factors``: the tensor's dimension ``fdim`` indexes the
    units of ``site``, composed as ``factors`` (more than one factor after a
    flatten). ``raw`` names a network input whose feature dim is not known
    until a layer consumes it. ``param`` names a parameter read directly.
    ``ids`` marks an integer tensor (token ids, positions). ``parts`` describes
    a concatenation along the unit axis (:mod:`wsl.space.concat`): dim
    ``fdim`` holds the units of several sites one after the other, as
    ``(site, factors)`` pairs; ``site`` is then ``None`` (rules that do not
    know concatenations see no units and refuse) and :attr:`segments` is the
    axis a consumer's weight gets. ``side`` is a second unit axis ``(dim, group,
    site)``: the hidden units of a token-mixing Linear, which sit on the last
    dim while the channel units stay on ``fdim`` (:mod:`wsl.space.token_mixing`).
    """

    shape: tuple[int, ...] = ()
    site: int | None = None
    fdim: int | None = None
    factors: tuple[Factor, ...] = ()
    raw: str | None = None
    param: str | None = None
    ids: bool = False
    parts: tuple[tuple[int, tuple[Factor, ...]], ...] = ()
    side: tuple[int, int, int] | None = None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def has_units(self) -> bool:
        return self.site is not None or bool(self.parts)

    @property
    def unit_sites(self) -> list[int]:
        """Every site whose units this tensor carries (one, several for a concatenation, or none)."""
        sites = [s for s, _ in self.parts] if self.parts else [] if self.site is None else [self.site]
        return sites + ([self.side[2]] if self.side is not None else [])

    @property
    def segments(self) -> Axis:
        """The unit axis as segments: one per concatenated part (one if not concatenated)."""
        if self.parts:
            return tuple(tuple(f) for _, f in self.parts)
        return () if self.site is None else (tuple(self.factors),)

    def with_(self, **kw: Any) -> "Val":
        d = dict(shape=self.shape, site=self.site, fdim=self.fdim, factors=self.factors,
                 raw=self.raw, param=self.param, ids=self.ids, parts=self.parts, side=self.side)
        d.update(kw)
        return Val(**d)


@dataclass
class _G:
    size: int
    kind: str
    name: str
    fixed: bool = False
    parent: int | None = None


@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    role: str
    module: str
    op: str
    axes: tuple[Axis, ...]
    buffer: bool = False
    diagonal: tuple[tuple[int, int, int], ...] = ()


@dataclass
class SpecBuilder:
    groups: list[_G] = field(default_factory=list)
    uf: list[int] = field(default_factory=list)
    sites: list[dict[str, Any]] = field(default_factory=list)
    site_slots: dict[int, set[str]] = field(default_factory=dict)
    connections: list[Connection] = field(default_factory=list)
    node_params: list[NodeParam] = field(default_factory=list)
    tensors: dict[str, _Tensor] = field(default_factory=dict)
    extras: list[str] = field(default_factory=list)
    inputs: dict[str, int] = field(default_factory=dict)
    input_dims: dict[str, tuple[tuple[int, ...], int]] = field(default_factory=dict)
    param_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    buffer_names: set[str] = field(default_factory=set)
    tied: list[tuple[str, str]] = field(default_factory=list)
    read: set[str] = field(default_factory=set)  #: state_dict names the traced forward() reads
    activations: set[str] = field(default_factory=set)

    # ----------------------------------------------------------------- groups
    def new_group(self, size: int, kind: str, name: str, fixed: bool = False) -> int:
        self.groups.append(_G(size, kind, name, fixed))
        self.uf.append(len(self.uf))
        return len(self.uf) - 1

    def find(self, g: int) -> int:
        root = g
        while self.uf[root] != root:
            root = self.uf[root]
        while self.uf[g] != root:
            self.uf[g], g = root, self.uf[g]
        return root

    def tie(self, a: int, b: int, where: str) -> int:
        """Force groups ``a`` and ``b`` to be permuted together."""
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        if b < a:  # the earliest group names the union
            a, b = b, a
        ga, gb = self.groups[a], self.groups[b]
        if ga.size != gb.size:
            raise TraceError(f"at '{where}': cannot tie unit groups of sizes {ga.size} and {gb.size}")
        self.uf[b] = a
        ga.fixed = ga.fixed or gb.fixed
        if ga.kind in ("hidden", "channel") and gb.kind not in ("hidden", "channel"):
            ga.kind = gb.kind
        if gb.parent is not None:
            self.nest(a, gb.parent, where)
        return a

    def nest(self, child: int, parent: int, where: str) -> None:
        """Require ``child``'s units to come in ``size(parent)`` blocks permuted by ``parent``."""
        c, p = self.find(child), self.find(parent)
        gc, gp = self.groups[c], self.groups[p]
        if c == p:
            return
        if gc.size % gp.size:
            raise UnsupportedLayerError(where, "nested groups", f"{gc.size} units cannot form {gp.size} equal blocks")
        if gc.size == gp.size:
            self.tie(c, p, where)
            return
        if gc.parent is None:
            gc.parent = p
            return
        q = self.find(gc.parent)
        gq = self.groups[q]
        if q == p:
            return
        if gq.size == gp.size:
            self.tie(q, p, where)
        elif gq.size < gp.size:
            if gp.size % gq.size:
                raise UnsupportedLayerError(where, "nested groups", f"block structures {gq.size} and {gp.size} conflict")
            gc.parent = p
            self.nest(p, q, where)
        else:
            if gq.size % gp.size:
                raise UnsupportedLayerError(where, "nested groups", f"block structures {gq.size} and {gp.size} conflict")
            self.nest(q, p, where)

    def fix(self, g: int) -> None:
        self.groups[self.find(g)].fixed = True

    def size(self, g: int) -> int:
        return self.groups[self.find(g)].size

    # ------------------------------------------------------------------ sites
    def new_site(self, group: int, name: str, kind: str, depth: int) -> int:
        self.sites.append(dict(group=group, name=name, kind=kind, depth=depth))
        self.site_slots[len(self.sites) - 1] = set()
        return len(self.sites) - 1

    def site_group(self, site: int) -> int:
        return int(self.sites[site]["group"])

    def depth(self, site: int | None) -> int:
        return -1 if site is None else int(self.sites[site]["depth"])

    def connect(self, kind: str, src: int, dst: int, module: str, **kw: Any) -> None:
        self.connections.append(Connection(kind=kind, src=src, dst=dst, module=module, **kw))

    def attach(self, site: int, slot: str, tensor: str, where: str, part: tuple[int, ...] = ()) -> int:
        """Store a one-axis tensor as node feature ``slot`` of ``site``.

        If the slot is taken (two norms in a row), a fresh site of the same
        group is added behind an identity edge, and the parameter goes there.
        Returns the site that holds the parameter (the new value site).
        """
        assert slot in NODE_SLOTS, slot
        if slot in self.site_slots[site]:
            old = site
            site = self.new_site(self.site_group(old), where, "hidden", self.depth(old))
            self.connect("residual", old, site, where)
        self.site_slots[site].add(slot)
        self.node_params.append(NodeParam(site=site, slot=slot, tensor=tensor, part=part))
        return site

    # ---------------------------------------------------------------- tensors
    def add_tensor(self, name: str, shape: tuple[int, ...], role: str, module: str, op: str,
                   axes: tuple[Axis, ...], buffer: bool = False,
                   diagonal: tuple[tuple[int, int, int], ...] = ()) -> None:
        if name in self.tensors:
            raise TraceError(f"tensor '{name}' is used by more than one layer; shared weights are not supported")
        for d, ax in enumerate(axes):
            n = sum(_prod(f[1] for f in seg) for seg in ax)
            if n != shape[d]:
                raise TraceError(f"internal: axis {d} of '{name}' has size {shape[d]} but its factors give {n}")
        self.tensors[name] = _Tensor(name, tuple(shape), role, module, op, axes, buffer, diagonal)

    def resolve_raw(self, v: Val) -> Val:
        """A raw input whose unit dim is already known (from an earlier layer) as a unit Val."""
        if v.raw is None or v.raw not in self.input_dims:
            return v
        shape, fdim = self.input_dims[v.raw]
        if tuple(v.shape) != tuple(shape):
            return v
        site = self.inputs[v.raw]
        g = self.site_group(site)
        return Val(shape=v.shape, site=site, fdim=fdim, factors=((g, self.size(g)),))

    def resolve_raw_at(self, v: Val, fdim: int, where: str) -> Val:
        """Decide that raw input ``v`` carries its units on ``fdim``."""
        assert v.raw is not None
        site = self.input_site(v.raw, v.shape[fdim], where)
        self.input_dims.setdefault(v.raw, (tuple(v.shape), fdim))
        g = self.site_group(site)
        return Val(shape=v.shape, site=site, fdim=fdim, factors=((g, v.shape[fdim]),))

    def input_site(self, key: str, size: int, where: str) -> int:
        """The site of network input ``key``, created on first use with ``size`` units."""
        if key in self.inputs:
            site = self.inputs[key]
            if self.size(self.site_group(site)) != size:
                raise UnsupportedLayerError(where, "input", f"input '{key}' is read with {size} and "
                                            f"{self.size(self.site_group(site))} features by different layers")
            return site
        g = self.new_group(size, "input", key, fixed=True)
        site = self.new_site(g, key, "input", 0)
        self.inputs[key] = site
        return site

    # ----------------------------------------------------------------- finish
    def finish(self, order: list[tuple[str, tuple[int, ...], bool]], aliases: dict[str, str],
               meta: dict[str, Any]) -> WeightSpaceSpec:
        """Resolve the union-find and renumber everything.

        ``order`` lists (name, shape, is_buffer) of the state_dict in order;
        every entry must have been claimed by a layer, be an extra, or an alias.
        """
        # Fixedness flows from a nested group to its parent (heads cannot move
        # if the units of one head's q/k cannot).
        changed = True
        while changed:
            changed = False
            for i in range(len(self.groups)):
                if self.find(i) != i:
                    continue
                g = self.groups[i]
                if g.fixed and g.parent is not None and not self.groups[self.find(g.parent)].fixed:
                    self.groups[self.find(g.parent)].fixed = True
                    changed = True
        roots: dict[int, int] = {}

        def gid(g: int) -> int:
            r = self.find(g)
            if r not in roots:
                roots[r] = len(roots)
            return roots[r]

        def fac(f: Factor) -> Factor:
            return (None if f[0] is None else gid(f[0]), f[1])

        tensors = []
        for name, shape, is_buf in order:
            if name in aliases:
                t = self.tensors[aliases[name]]
                tensors.append(TensorSpec(name, t.shape, t.role, t.module, t.op,
                                          tuple(tuple(tuple(fac(f) for f in seg) for seg in ax) for ax in t.axes),
                                          is_buf, t.diagonal))
                continue
            if name in self.extras:
                tensors.append(TensorSpec(name, shape, "extra", name.rsplit(".", 1)[0], "extra",
                                          tuple(((((None, n),),)) for n in shape), is_buf))
                continue
            t = self.tensors[name]
            if tuple(t.shape) != tuple(shape):
                raise TraceError(f"internal: '{name}' traced with shape {t.shape}, state_dict has {shape}")
            tensors.append(TensorSpec(name, t.shape, t.role, t.module, t.op,
                                      tuple(tuple(tuple(fac(f) for f in seg) for seg in ax) for ax in t.axes),
                                      is_buf, t.diagonal))
        sites = [Site(i, gid(s["group"]), s["name"], s["kind"], s["depth"]) for i, s in enumerate(self.sites)]
        for i in range(len(self.groups)):  # parents that index no axis still get ids
            gid(i)
        groups: list[Group | None] = [None] * len(roots)
        for r, new in roots.items():
            g = self.groups[r]
            groups[new] = Group(new, g.size, g.kind, g.name, g.fixed, None if g.parent is None else gid(g.parent))
        return WeightSpaceSpec(
            tensors=tuple(tensors),
            groups=tuple(g for g in groups if g is not None),
            sites=tuple(sites),
            connections=tuple(self.connections),
            node_params=tuple(self.node_params),
            extras=tuple(n for n, _, _ in order if n in self.extras),
            aliases=tuple(sorted(aliases.items())),
            meta=tuple(sorted(meta.items())),
        )


def _prod(xs: Any) -> int:
    out = 1
    for x in xs:
        out *= int(x)
    return out

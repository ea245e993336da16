"""``WeightSpace``: the one object that knows a network's parameter symmetries."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, TypeVar

import torch
from torch import nn

from wsl.errors import StateDictMismatchError, WslError
from wsl.space.axes import permute_tensor
from wsl.space.spec import Connection, Group, Site, TensorSpec, WeightSpaceSpec
from wsl.space.value_nodes import value_node_sets

StateDict = Mapping[str, torch.Tensor]
T = TypeVar("T")


class WeightSpace:
    """The symmetry structure of one architecture.

    Build it with :meth:`from_module` (traces the module), or from a
    state_dict plus an architecture reference with
    :func:`wsl.io.space_from_state_dict`.
    It lists every state_dict entry with its role and, per axis, the group of
    interchangeable units that indexes it; :meth:`permute` applies a
    permutation of every group consistently; :func:`random_permutation`
    samples one. Parameter graphs (:mod:`wsl.graph`) and dense features
    (:mod:`wsl.graph.features`) are derived from it.
    """

    def __init__(self, spec: WeightSpaceSpec, arch: Any = None) -> None:
        self.spec = spec
        self.arch = arch
        self.tensors: dict[str, TensorSpec] = {t.name: t for t in spec.tensors}
        self.groups: tuple[Group, ...] = spec.groups
        self.sites: tuple[Site, ...] = spec.sites
        self.connections: tuple[Connection, ...] = spec.connections
        self._cache: dict[str, Any] = {}

    # ------------------------------------------------------------ construction
    @classmethod
    def from_module(cls, module: nn.Module, example_input: Any = None, frontend: str = "auto") -> "WeightSpace":
        """Trace ``module`` and derive its weight space.

        ``example_input``: a tensor, a tuple of positional inputs or a dict of
        keyword inputs (guessed when omitted). ``frontend``: ``"auto"``
        (torch.fx, else torch.export), ``"fx"`` or ``"export"``; see
        :mod:`wsl.space.trace`. A module on the meta device is traced without
        allocating weights.
        """
        from wsl.space.trace import trace_spec

        return cls(trace_spec(module, example_input, frontend), arch=getattr(module, "wsl_arch", None))

    @classmethod
    def from_pretrained(cls, source: Any, example_input: Any = None, frontend: str = "auto") -> "WeightSpace":
        """The weight space of a pretrained checkpoint, traced from its configuration alone.

        ``source``: ``hf://ORG/NAME[@REV][/PATH]`` or a local Hugging Face
        checkpoint folder. Only ``config.json`` and the safetensors header are
        read (never the weights); the module is built on the meta device. The
        readers are registered by :mod:`wsl.hub` (see :func:`register_pretrained_loader`).
        """
        for loader in _PRETRAINED:
            space = loader(source, example_input=example_input, frontend=frontend)
            if space is not None:
                return space  # type: ignore[no-any-return]
        raise WslError(f"{source}: no reader of pretrained checkpoints accepts it (hf:// URIs and folders with a "
                       "config.json are read once wsl.hub is imported, as `import wsl` does)")

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "WeightSpace":
        return cls(WeightSpaceSpec.from_json_dict(d))

    def to_json(self) -> dict[str, Any]:
        return self.spec.to_json_dict()

    # --------------------------------------------------------------- queries
    @property
    def names(self) -> list[str]:
        return list(self.tensors)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {n: t.shape for n, t in self.tensors.items()}

    @property
    def num_parameters(self) -> int:
        """Number of scalars in parameters (buffers such as BN statistics excluded)."""
        skip = {a for a, _ in self.spec.aliases} | {a for a, _ in self.meta("tied", ())}
        return sum(t.numel for t in self.tensors.values() if not t.buffer and t.name not in skip)

    @property
    def num_elements(self) -> int:
        """Number of scalars in the whole state_dict (parameters and buffers)."""
        return sum(t.numel for t in self.tensors.values())

    def cached(self, key: str, compute: Callable[["WeightSpace"], T]) -> T:
        """``compute(self)``, computed on first use and kept with this space under ``key``.

        Structures derived from the spec (graph layouts, feature blocks, ...)
        are cached here; keys are namespaced by their owner (``"graph.layout"``).
        """
        if key not in self._cache:
            self._cache[key] = compute(self)
        return self._cache[key]  # type: ignore[no-any-return]

    @property
    def signature(self) -> str:
        return self.cached("space.signature", lambda s: s.spec.signature())

    def permutable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.permutable]

    def meta(self, key: str, default: Any = None) -> Any:
        return dict(self.spec.meta).get(key, default)

    def group_name(self, gid: int) -> str:
        g = self.groups[gid]
        return f"g{gid}:{g.kind}[{g.size}]{'(fixed)' if g.fixed else ''}"

    def graph_size(self) -> tuple[int, int]:
        """(num_nodes, num_edges) of the parameter graph, without building it."""
        def count(space: WeightSpace) -> tuple[int, int]:
            nodes = sum(space.groups[s.group].size for s in space.sites)
            extra = sum(v.count for v in value_node_sets(space.spec)[0])  # wsl.space.value_nodes: 1 edge each
            return nodes + extra, sum(_num_edges(space, c) for c in space.connections) + extra

        return self.cached("space.graph_size", count)

    # ---------------------------------------------------------------- checks
    def check(self, state_dict: StateDict, *, batched: bool = False, where: str = "") -> None:
        """Raise :class:`StateDictMismatchError` unless keys and shapes match exactly."""
        exp = set(self.tensors)
        got = set(state_dict)
        off = 1 if batched else 0
        mism = [(n, self.tensors[n].shape, tuple(state_dict[n].shape[off:]))
                for n in exp & got if tuple(state_dict[n].shape[off:]) != self.tensors[n].shape]
        if batched and not mism and got == exp:
            sizes = {int(state_dict[n].shape[0]) for n in exp}
            if len(sizes) > 1:
                raise WslError(f"stacked state_dict has different model counts per tensor: {sorted(sizes)}")
        if exp != got or mism:
            raise StateDictMismatchError(exp - got, got - exp, mism, where=where)

    # ----------------------------------------------------------- permutations
    def permute(self, state_dict: StateDict, perms: Mapping[int, torch.Tensor], *,
                batched: bool = False) -> dict[str, torch.Tensor]:
        """Apply one permutation per group to every tensor (a new dict).

        ``perms[g]`` is a LongTensor ``p`` of length ``groups[g].size`` meaning
        "new unit ``i`` is old unit ``p[i]``". With ``batched=True`` tensors have
        a leading model dim and each ``perms[g]`` may be ``(N, size)``.
        Groups missing from ``perms`` (and all fixed groups) are left alone.
        """
        for g, p in perms.items():
            grp = self.groups[g]
            if grp.fixed:
                raise WslError(f"group {self.group_name(g)} is fixed and cannot be permuted")
            if p.shape[-1] != grp.size:
                raise WslError(f"permutation for group {g} has length {p.shape[-1]}, expected {grp.size}")
        return {name: permute_tensor(t, self.tensors[name].axes, perms, batched, self.tensors[name].diagonal)
                if name in self.tensors else t for name, t in state_dict.items()}

    def canonical_permutation(self, state_dict: StateDict) -> dict[int, torch.Tensor]:
        """The permutation that sorts every permutable group's units by weight norm.

        A unit's score is the sum of squares of every parameter it indexes
        (all tensors, all axes). Units are ordered by decreasing score; nested
        groups first order their blocks (by the summed scores of all groups
        nested in the same parent), then the units inside each block.
        ``canonicalize(permute(sd, p)) == canonicalize(sd)`` for any ``p`` when
        scores are distinct -- a cheap way to remove the permutation symmetry.
        """
        from wsl.space.axes import to_canonical

        scores: dict[int, torch.Tensor] = {}
        for t in self.tensors.values():
            if t.name not in state_dict or t.name in self.spec.extras:
                continue
            x = state_dict[t.name].detach().to(torch.float64).unsqueeze(0)
            for block in t.blocks():
                c = to_canonical(x, block)[0].pow(2)
                for i, g in enumerate(block.unit_groups):
                    dims = [d for d in range(c.dim()) if d != i]
                    v = c.sum(dim=dims) if dims else c
                    scores[g] = scores.get(g, 0) + v
        for g in self.groups:  # parents (heads, norm groups) score blocks by their children
            if g.parent is not None and g.id in scores:
                nb = self.groups[g.parent].size
                blk = scores[g.id].view(nb, -1).sum(1)
                scores[g.parent] = scores.get(g.parent, 0) + blk
        perms: dict[int, torch.Tensor] = {}

        def perm(gid: int) -> torch.Tensor:
            if gid in perms:
                return perms[gid]
            g = self.groups[gid]
            sc = scores.get(gid, torch.zeros(g.size, dtype=torch.float64))
            if g.parent is None:
                p = torch.arange(g.size) if g.fixed else torch.argsort(-sc, stable=True)
            else:
                parent = perm(g.parent)
                nb = self.groups[g.parent].size
                inner = g.size // nb
                by_block = sc.view(nb, inner)[parent]
                ip = torch.arange(inner).expand(nb, inner) if g.fixed else torch.argsort(-by_block, dim=1, stable=True)
                p = (parent.unsqueeze(1) * inner + ip).flatten()
            perms[gid] = p
            return p

        for g in self.groups:
            perm(g.id)
        return {gid: p for gid, p in perms.items() if self.groups[gid].permutable}

    def canonicalize(self, state_dict: StateDict) -> dict[str, torch.Tensor]:
        """``state_dict`` with every permutable group sorted (see :meth:`canonical_permutation`)."""
        return self.permute(state_dict, self.canonical_permutation(state_dict))

    # -------------------------------------------------------------- stacking
    def stack(self, state_dicts: Iterable[StateDict]) -> dict[str, torch.Tensor]:
        """N state_dicts -> one dict of tensors with a leading model dim."""
        sds = list(state_dicts)
        for i, sd in enumerate(sds):
            self.check(sd, where=f"model {i}")
        return {n: torch.stack([sd[n] for sd in sds]) for n in self.tensors}

    def unstack(self, stacked: StateDict) -> list[dict[str, torch.Tensor]]:
        n = int(next(iter(stacked.values())).shape[0])
        return [{k: v[i] for k, v in stacked.items()} for i in range(n)]

    # ------------------------------------------------------------- reporting
    def describe(self) -> dict[str, Any]:
        """JSON-able summary (used by ``wsl inspect --json``)."""
        nodes, edges = self.graph_size()
        return {
            "num_parameters": self.num_parameters,
            "num_buffer_elements": self.num_elements - self.num_parameters,
            "tensors": [
                {"name": t.name, "shape": list(t.shape), "role": t.role, "buffer": t.buffer,
                 "axes": [_axis_str(self, ax) for ax in t.axes]}
                for t in self.tensors.values()
            ],
            "groups": [
                {"id": g.id, "size": g.size, "kind": g.kind, "name": g.name, "fixed": g.fixed, "parent": g.parent}
                for g in self.groups
            ],
            "graph": {"num_nodes": nodes, "num_edges": edges},
            "unread": list(self.meta("unread", ())),
        }

    def summary(self) -> str:
        d = self.describe()
        lines = [f"{'tensor':<48} {'shape':<20} {'role':<12} axes"]
        for t in d["tensors"]:
            lines.append(f"{t['name']:<48} {str(tuple(t['shape'])):<20} {t['role']:<12} {' | '.join(t['axes'])}")
        perm = [g for g in self.groups if g.permutable]
        lines.append("")
        lines.append(f"parameters: {d['num_parameters']:,}   buffers: {d['num_buffer_elements']:,}")
        lines.append(f"groups: {len(self.groups)} ({len(perm)} permutable, "
                     f"{sum(g.size for g in perm):,} permutable units)")
        lines.append(f"graph: {d['graph']['num_nodes']:,} nodes, {d['graph']['num_edges']:,} edges")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"WeightSpace({len(self.tensors)} tensors, {self.num_parameters:,} parameters, "
                f"{len(self.permutable_groups())} permutable groups)")


def _axis_str(space: WeightSpace, axis: Any) -> str:
    segs = []
    for seg in axis:
        fs = []
        for f in seg:
            fs.append(f"{f[1]}" if f[0] is None else f"g{f[0]}" if len(f) == 2 else f"g{f[0]}.{f[1]}")
        segs.append("x".join(fs) if fs else "1")
    return "+".join(segs)


def _num_edges(space: WeightSpace, c: Connection) -> int:
    if c.tensor is None:
        n = space.groups[space.sites[c.dst].group].size
        if c.kind == "attn_kv":
            return n * n // int(c.attr("heads", 1))
        return n
    t = space.tensors[c.tensor]
    block = next(b for b in t.blocks() if b.part == c.part) if c.part else next(iter(t.blocks()))
    units = block.compact_unit_shape  # a grouped conv has edges only inside its blocks
    if c.src_axis == c.dst_axis:
        return units[c.src_axis]
    return units[c.src_axis] * units[c.dst_axis]


PretrainedLoader = Callable[..., "WeightSpace | None"]
_PRETRAINED: list[PretrainedLoader] = []


def register_pretrained_loader(fn: PretrainedLoader) -> None:
    """Add ``fn(source, example_input=None, frontend="auto") -> WeightSpace | None`` (None: not its kind of
    source) to :meth:`WeightSpace.from_pretrained` (``wsl.hub`` registers the ``hf://`` reader)."""
    if fn not in _PRETRAINED:
        _PRETRAINED.append(fn)


def random_permutation(space: WeightSpace, generator: torch.Generator | None = None,
                       batch: int | None = None) -> dict[int, torch.Tensor]:
    """Sample a uniformly random element of the network's permutation group.

    Returns ``{group_id: perm}`` for every permutable group (``(size,)`` or,
    with ``batch``, ``(batch, size)``). Nested groups (heads, GroupNorm blocks)
    move whole blocks with their parent's permutation and permute independently
    inside each block.
    """
    done: dict[int, torch.Tensor] = {}

    def sample(gid: int) -> torch.Tensor:
        if gid in done:
            return done[gid]
        g = space.groups[gid]
        shape = (batch,) if batch is not None else ()
        if g.fixed and g.parent is None:
            p = torch.arange(g.size).expand(*shape, g.size).clone()
        elif g.parent is None:
            p = torch.argsort(torch.rand(*shape, g.size, generator=generator), dim=-1)
        else:
            parent = sample(g.parent)
            nb = space.groups[g.parent].size
            inner = g.size // nb
            if g.fixed:
                ip = torch.arange(inner).expand(*shape, nb, inner)
            else:
                ip = torch.argsort(torch.rand(*shape, nb, inner, generator=generator), dim=-1)
            p = (parent.unsqueeze(-1) * inner + ip).flatten(-2)
        done[gid] = p
        return p

    for g in space.groups:
        sample(g.id)
    return {gid: p for gid, p in done.items() if space.groups[gid].permutable}


def identity_permutation(space: WeightSpace) -> dict[int, torch.Tensor]:
    return {g.id: torch.arange(g.size) for g in space.groups if g.permutable}


def invert_permutation(perms: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    return {g: torch.argsort(p, dim=-1) for g, p in perms.items()}


_ = math

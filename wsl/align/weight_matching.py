"""Weight matching (Ainsworth et al., "Git Re-Basin"), driven by the WeightSpace alone.

Find permutations ``P`` of every permutable unit group of ``model`` that make
it as close as possible to ``ref``::

    maximize over P    sum_t  < ref_t , P(model_t) >      (sum over every tensor t)

which is the same as minimizing ``sum_t ||ref_t - P(model_t)||^2``. The
problem is solved by coordinate descent: hold every group but one fixed; the
objective is then linear in the free group's permutation ``p``::

    S[i, j] = sum over (t, axis) indexed by g of < ref_t[unit i on axis], P_-g(model_t)[unit j on axis] >
    p       = argmax_p  sum_i S[i, p[i]]                 (a linear assignment)

where ``P_-g`` applies the current permutations of all other groups (and of
``g`` itself on any *other* axis ``g`` indexes, the usual linearization).
Before the descent, a warm-start sweep (:func:`warm_start`) solves groups
outward from the network's fixed inputs and outputs, using only tensors whose
other groups are already solved.
Everything the space knows takes part: residual-tied groups are one group,
kernel taps and flattened positions are edge features (summed over), biases
and norm parameters are tensors like the rest (buffers such as BN running
statistics only with ``include_buffers``).

Nested groups (attention heads with their q/k and v units, GroupNorm blocks)
are matched as blocks: for every pair of parent blocks ``(a, b)`` each child
group solves the assignment of the units of block ``b`` to those of block
``a`` (value ``V_c[a, b]``); the parent then assigns blocks on
``sum_c V_c`` (plus its own similarity, if it indexes tensors itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from scipy.optimize import linear_sum_assignment

from wsl.errors import WslError
from wsl.space import WeightSpace
from wsl.space.axes import to_canonical
from wsl.space.spec import Block

from wsl.align.space_match import shared_space

Perms = dict[int, torch.Tensor]


@dataclass
class AlignResult:
    """Permutations that align ``model`` to ``ref``: apply them with ``space.permute(sd, result.perms)``.

    ``objective_*`` is ``sum_t <ref_t, P(model_t)>`` and ``distance_*`` is
    ``sqrt(sum_t ||ref_t - P(model_t)||^2)``, over the tensors that took part,
    before (identity) and after alignment.
    """

    perms: Perms
    space: WeightSpace
    objective_before: float
    objective_after: float
    distance_before: float
    distance_after: float
    passes: int
    converged: bool

    def apply(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state_dict`` (of the aligned model) permuted into the reference's unit order."""
        return self.space.permute(state_dict, self.perms)

    def summary(self) -> dict[str, Any]:
        return {"objective_before": self.objective_before, "objective_after": self.objective_after,
                "distance_before": self.distance_before, "distance_after": self.distance_after,
                "passes": self.passes, "converged": self.converged,
                "groups_moved": sum(int(not torch.equal(p, torch.arange(p.numel()))) for p in self.perms.values())}


def assign(score: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The permutation ``p`` maximizing ``sum_i score[i, p[i]]``, and that maximum."""
    s = score.detach().cpu().numpy()
    rows, cols = linear_sum_assignment(s, maximize=True)
    return torch.as_tensor(cols, dtype=torch.long), float(s[rows, cols].sum())


class WeightProblem:
    """Canonical views of the two networks' blocks and, per group, where it indexes them."""

    def __init__(self, space: WeightSpace, ref: Mapping[str, torch.Tensor], model: Mapping[str, torch.Tensor],
                 include_buffers: bool, dtype: torch.dtype = torch.float32) -> None:
        self.space = space
        skip = set(space.spec.extras) | {a for a, _ in space.spec.aliases} | {a for a, _ in space.meta("tied", ())}
        self.blocks: list[tuple[Block, torch.Tensor, torch.Tensor]] = []
        self.where: dict[int, list[tuple[int, int]]] = {}  # group -> [(block index, unit axis)]
        for t in space.tensors.values():
            if t.name in skip or (t.buffer and not include_buffers) or not t.groups():
                continue
            a = ref[t.name].detach().to(dtype).unsqueeze(0)
            b = model[t.name].detach().to(device=a.device, dtype=dtype).unsqueeze(0)
            for block in t.blocks():
                if not block.unit_groups:
                    continue
                i = len(self.blocks)
                self.blocks.append((block, to_canonical(a, block)[0], to_canonical(b, block)[0]))
                for k, g in enumerate(block.unit_groups):
                    self.where.setdefault(g, []).append((i, k))

    def moved(self, i: int, perms: Perms, skip_axis: int | None = None) -> torch.Tensor:
        """Model block ``i`` with the current permutations on every unit axis but ``skip_axis``."""
        block, _, b = self.blocks[i]
        for k, g in enumerate(block.unit_groups):
            if k != skip_axis and g in perms:
                b = b.index_select(k, perms[g].to(b.device))
        return b

    def informed(self, g: int, known: set[int]) -> list[tuple[int, int]]:
        """Occurrences of ``g`` whose block's other unit axes all belong to ``known`` groups."""
        return [(i, k) for i, k in self.where.get(g, ())
                if all(h in known for j, h in enumerate(self.blocks[i][0].unit_groups) if j != k)]

    def similarity(self, g: int, perms: Perms, known: set[int] | None = None) -> torch.Tensor:
        """``S`` of group ``g``; with ``known``, only over blocks whose other groups are all known."""
        n = self.space.groups[g].size
        score = torch.zeros(n, n, dtype=torch.float64)
        occurrences = self.where.get(g, ()) if known is None else self.informed(g, known)
        for i, k in occurrences:
            a = self.blocks[i][1].movedim(k, 0).reshape(n, -1)
            b = self.moved(i, perms, skip_axis=k).movedim(k, 0).reshape(n, -1)
            score += (a @ b.T).cpu().double()
        return score

    def objective(self, perms: Perms) -> tuple[float, float]:
        dot = sq = 0.0
        for i, (_, a, _) in enumerate(self.blocks):
            b = self.moved(i, perms)
            dot += float(torch.dot(a.flatten().double(), b.flatten().double()))
            sq += float((a - b).double().pow(2).sum())
        return dot, sq ** 0.5


def tops_of(space: WeightSpace) -> list[int]:
    """Groups a coordinate-descent step solves: unnested groups that can move or hold movable children."""
    return [g.id for g in space.groups if g.parent is None
            and (g.permutable or any(c.parent == g.id and c.permutable for c in space.groups))]


def update(space: WeightSpace, top: int, perms: Perms, score: Callable[[int], torch.Tensor | None]) -> bool:
    """Re-solve the permutation of ``top`` and of the groups nested in it; True if anything moved.

    ``score(g)`` is the ``(n, n)`` similarity of group ``g``'s reference units
    (rows) to the model's units (columns), or ``None`` where ``g`` has none.
    """
    grp = space.groups[top]
    children = [c for c in space.groups if c.parent == top]
    before = {g: perms[g].clone() for g in [top] + [c.id for c in children] if g in perms}
    own = score(top)
    if not children:
        if own is not None and grp.permutable:
            perms[top], _ = assign(own)
        return any(not torch.equal(before[g], perms[g]) for g in before)
    nb = grp.size
    cost = own.clone() if own is not None else torch.zeros(nb, nb, dtype=torch.float64)
    inner: dict[int, list[list[torch.Tensor]]] = {}
    for c in children:
        if any(x.parent == c.id for x in space.groups):
            raise WslError(f"alignment: group {space.group_name(c.id)} nests further groups; "
                           "only one level of nesting is supported")
        d = c.size // nb
        sc = score(c.id)
        if sc is None:
            continue
        s = sc.view(nb, d, nb, d).permute(0, 2, 1, 3)
        if c.fixed:  # units inside a block cannot move: the block pair scores its diagonal
            cost += s.diagonal(dim1=2, dim2=3).sum(-1)
            continue
        rows: list[list[torch.Tensor]] = []
        for a in range(nb):
            row = []
            for b in range(nb):
                p, v = assign(s[a, b])
                cost[a, b] += v
                row.append(p)
            rows.append(row)
        inner[c.id] = rows
    sigma = assign(cost)[0] if grp.permutable else torch.arange(nb)
    if grp.permutable:
        perms[top] = sigma
    for c in children:
        if c.id not in perms:
            continue
        d = c.size // nb
        within = inner.get(c.id)
        perms[c.id] = torch.cat([sigma[a] * d + (within[a][int(sigma[a])] if within else torch.arange(d))
                                 for a in range(nb)])
    return any(not torch.equal(before[g], perms[g]) for g in before)


def neighbours(problem: WeightProblem, tops: list[int]) -> dict[int, set[int]]:
    """For each top group, the top groups whose similarity depends on its permutation.

    Two tops are neighbours when a tensor block has units of both (a top's
    units include those of the groups nested in it); a top that indexes two
    axes of one block is its own neighbour.
    """
    space = problem.space
    top_of = {t: t for t in tops}
    for g in space.groups:
        if g.parent is not None and g.parent in top_of:
            top_of[g.id] = g.parent
    out: dict[int, set[int]] = {t: set() for t in tops}
    for block, _, _ in problem.blocks:
        members = [top_of[g] for g in block.unit_groups if g in top_of]
        for i, a in enumerate(members):
            for j, b in enumerate(members):
                if i != j:
                    out[a].add(b)
    return out


def warm_start(problem: WeightProblem, perms: Perms, tops: list[int]) -> None:
    """A first sweep that solves each group from evidence that is already right.

    Fixed groups (network inputs and outputs) are known from the start. A top
    group is solved as soon as some tensor block links it only to known groups
    (the first layer's weight links the first hidden group to the input), using
    only such blocks; then it is known. On a chain this propagates from both
    ends inward, where a random first pass would mix in the unsolved
    neighbours' arbitrary order and can settle in a poor local optimum.
    """
    space = problem.space
    known = {g.id for g in space.groups if not g.permutable}
    pending = list(tops)
    while pending:
        ready = []
        for top in pending:
            members = [top] + [c.id for c in space.groups if c.parent == top]
            if any(problem.informed(m, known) for m in members):
                ready.append((top, members))
        if not ready:
            return  # the rest (a cycle of unknowns) is left to the coordinate descent
        for top, members in ready:
            snapshot = set(known)
            update(space, top, perms, lambda g: problem.similarity(g, perms, snapshot)
                   if problem.informed(g, snapshot) else None)
        for top, members in ready:
            known.update(members)
            pending.remove(top)


def descend(problem: WeightProblem, perms: Perms, tops: list[int], max_passes: int, seed: int,
            progress: bool) -> tuple[int, bool]:
    """Coordinate descent over ``tops`` (random order per pass) until no permutation can change.

    A top is re-solved only when a neighbour (:func:`neighbours`) moved since
    its last solve: otherwise its similarity, and so its assignment, are the
    same as last time. Converged means every top is at that fixed point.
    """
    gen = torch.Generator().manual_seed(seed)
    bar = _bar(max_passes, progress)
    near = neighbours(problem, tops)
    dirty = set(tops)
    passes = 0
    for passes in range(1, max_passes + 1):
        order = [tops[i] for i in torch.randperm(len(tops), generator=gen).tolist()]
        for top in order:
            if top not in dirty:
                continue
            dirty.discard(top)
            if update(problem.space, top, perms,
                      lambda g: problem.similarity(g, perms) if g in problem.where else None):
                dirty |= near[top]
        if bar is not None:
            bar.update(1)
        if not dirty:
            break
    if bar is not None:
        bar.close()
    return passes, not dirty


def weight_matching(ref: Any, model: Any, space: WeightSpace | None = None, *, max_passes: int = 100,
                    seed: int = 0, include_buffers: bool = False, progress: bool | None = None) -> AlignResult:
    """Permutations of ``model``'s unit groups that bring it closest to ``ref`` (see module docstring).

    ``ref``/``model``: ``nn.Module``s or state_dicts (then pass ``space``). Groups
    are visited in a random order (seeded) each pass, until a pass changes no
    permutation or ``max_passes`` is reached. Aligning never changes ``model``'s
    function: the result is an element of its symmetry group. Similarities are
    computed in ``float32`` (the objective in ``float64``).
    """
    space, ref_sd, model_sd = shared_space(ref, model, space)
    problem = WeightProblem(space, ref_sd, model_sd, include_buffers)
    perms: Perms = {g.id: torch.arange(g.size) for g in space.groups if g.permutable}
    dot0, dist0 = problem.objective(perms)
    show = progress if progress is not None else space.num_parameters > 5_000_000
    tops = tops_of(space)
    warm_start(problem, perms, tops)
    passes, converged = descend(problem, perms, tops, max_passes, seed, show)
    dot1, dist1 = problem.objective(perms)
    return AlignResult({g: p for g, p in perms.items() if space.groups[g].permutable}, space, dot0, dot1,
                       dist0, dist1, passes, converged)


def _bar(total: int, show: bool) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="weight matching", unit="pass", leave=False)



"""Property tests (hypothesis) of the index arithmetic in :mod:`wsl.space.axes` on random factor structures.

A random structure is a set of groups with sizes and a tensor whose axes are concatenations of segments,
each a row-major product of factors ``(group, size)`` or ``(None, size)``. Checked:

* canonical views: shape, the round trip ``from_canonical(to_canonical(t))``, and every element against a
  brute-force walk over the factor indices; ``canonical_flat_index`` hits each element of the block once;
* permutations: ``permute_tensor`` agrees with a brute-force gather, undoes with the inverse permutation,
  composes (``p`` then ``q`` is ``p[q]``), and batched permutations act per model.

Examples are derandomized (the suite is deterministic) and nothing is stored on disk.
"""

from __future__ import annotations

import itertools
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsl.space import invert_permutation
from wsl.space.axes import canonical_flat_index, from_canonical, permute_tensor, segment_index, slice_block, \
    to_canonical
from wsl.space.spec import Block

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None)


@st.composite
def group_sizes(draw: st.DrawFn) -> dict[int, int]:
    return {g: draw(st.integers(1, 4)) for g in range(draw(st.integers(1, 3)))}


@st.composite
def segments(draw: st.DrawFn, sizes: dict[int, int], max_factors: int = 3) -> tuple[tuple[int | None, int], ...]:
    out = []
    for _ in range(draw(st.integers(1, max_factors))):
        g = draw(st.sampled_from([None, *sizes]))
        out.append((g, draw(st.integers(1, 3)) if g is None else sizes[g]))
    return tuple(out)


@st.composite
def blocks(draw: st.DrawFn) -> Block:
    """A block of a larger tensor: each axis one segment, at an offset, with room to spare."""
    sizes = draw(group_sizes())
    axes = tuple(draw(segments(sizes)) for _ in range(draw(st.integers(0, 3))))
    slices = []
    for seg in axes:
        start = draw(st.integers(0, 2))
        slices.append((start, start + math.prod(n for _, n in seg)))
    return Block("t", (0,), tuple(slices), axes)


def tensor_for(block: Block, n: int = 2) -> torch.Tensor:
    shape = [b + extra for (_, b), extra in zip(block.slices, itertools.cycle([0, 1]))]
    return torch.randn(n, *shape, dtype=torch.float64)


def brute_canonical(x: torch.Tensor, block: Block) -> torch.Tensor:
    """The canonical view element by element: unit factors first, the other factors flattened into F."""
    factors = [(a, f) for a, seg in enumerate(block.axes) for f in range(len(seg))]
    units = [(a, f) for a, f in factors if block.axes[a][f][0] is not None]
    fixed = [(a, f) for a, f in factors if block.axes[a][f][0] is None]
    out = torch.zeros(x.shape[0], *block.unit_shape, block.feature_size, dtype=x.dtype)
    for idx in itertools.product(*[range(block.axes[a][f][1]) for a, f in factors]):
        at = dict(zip(factors, idx))
        pos = []
        for a, seg in enumerate(block.axes):  # row-major position inside the axis, plus the block's offset
            flat = 0
            for f, (_, n) in enumerate(seg):
                flat = flat * n + at[(a, f)]
            pos.append(block.slices[a][0] + flat)
        feat = 0
        for a, f in fixed:
            feat = feat * block.axes[a][f][1] + at[(a, f)]
        out[(slice(None), *[at[u] for u in units], feat)] = x[(slice(None), *pos)]
    return out


@SETTINGS
@given(blocks())
def test_canonical_view_round_trips_and_matches_brute_force(block: Block) -> None:
    x = tensor_for(block)
    c = to_canonical(x, block)
    assert c.shape == (2, *block.unit_shape, block.feature_size)
    assert torch.equal(c, brute_canonical(x, block))
    assert torch.equal(from_canonical(c, block), slice_block(x, block))
    flat = canonical_flat_index(block, tuple(x.shape[1:]))
    assert flat.numel() == math.prod(block.shape) == flat.unique().numel()  # every element of the block once
    assert torch.equal(x.reshape(2, -1)[:, flat], c.reshape(2, -1))


@st.composite
def structures(draw: st.DrawFn) -> tuple[dict[int, int], tuple[tuple[tuple[tuple[int | None, int], ...], ...], ...]]:
    """Group sizes and tensor axes of one or two segments each (fused q/k/v-like axes)."""
    sizes = draw(group_sizes())
    axes = tuple(tuple(draw(segments(sizes, 2)) for _ in range(draw(st.integers(1, 2))))
                 for _ in range(draw(st.integers(1, 3))))
    return sizes, axes


def random_perms(sizes: dict[int, int], seed: int, batch: int | None = None) -> dict[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = () if batch is None else (batch,)
    return {k: torch.argsort(torch.rand(*shape, n, generator=g), dim=-1) for k, n in sizes.items()}


def brute_permute(t: torch.Tensor, axes: tuple, perms: dict[int, torch.Tensor]) -> torch.Tensor:
    """``out[i0, i1, ...] = t[src(i0), src(i1), ...]`` with each factor index sent through its group's perm."""
    out = torch.empty_like(t)
    for pos in itertools.product(*[range(s) for s in t.shape]):
        src = []
        for axis, i in zip(axes, pos):
            offset = 0
            for seg in axis:  # find the segment holding i, then decompose i into its factor indices
                width = math.prod(n for _, n in seg)
                if i < width:
                    break
                i -= width
                offset += width
            digits = []
            for _, n in reversed(seg):
                digits.append(i % n)
                i //= n
            flat = 0
            for (g, n), d in zip(seg, reversed(digits)):
                flat = flat * n + (int(perms[g][d]) if g is not None else d)
            src.append(offset + flat)
        out[pos] = t[tuple(src)]
    return out


@SETTINGS
@given(structures(), st.integers(0, 2**16))
def test_permutations_match_brute_force_invert_and_compose(structure: tuple, seed: int) -> None:
    sizes, axes = structure
    shape = [sum(math.prod(n for _, n in seg) for seg in axis) for axis in axes]
    t = torch.randn(*shape, dtype=torch.float64)
    p, q = random_perms(sizes, seed), random_perms(sizes, seed + 1)
    moved = permute_tensor(t, axes, p, batched=False)
    assert torch.equal(moved, brute_permute(t, axes, p))
    assert torch.equal(permute_tensor(moved, axes, invert_permutation(p), batched=False), t)
    twice = permute_tensor(moved, axes, q, batched=False)
    assert torch.equal(twice, permute_tensor(t, axes, {g: p[g][q[g]] for g in sizes}, batched=False))


@SETTINGS
@given(structures(), st.integers(0, 2**16))
def test_batched_permutations_act_per_model(structure: tuple, seed: int) -> None:
    sizes, axes = structure
    shape = [sum(math.prod(n for _, n in seg) for seg in axis) for axis in axes]
    t = torch.randn(3, *shape, dtype=torch.float64)
    p = random_perms(sizes, seed, batch=3)
    moved = permute_tensor(t, axes, p, batched=True)
    for i in range(3):
        one = {g: v[i] for g, v in p.items()}
        assert torch.equal(moved[i], permute_tensor(t[i], axes, one, batched=False))
    assert torch.equal(permute_tensor(moved, axes, invert_permutation(p), batched=True), t)
    for seg in (s for axis in axes for s in axis):
        idx = segment_index(seg, p, batch=3)
        assert idx.shape == (3, math.prod(n for _, n in seg))
        assert all(row.sort().values.equal(torch.arange(idx.shape[1])) for row in idx)  # a permutation per model

"""Parameters read through a view that only adds or drops singleton dims.

Layers often broadcast a per-unit parameter against an activation by
reshaping it first: ``x * gamma.reshape(1, -1, 1, 1)`` (a layer scale),
``weight[:, None, None] * x`` (a channels-first norm). Such a view has the
same non-singleton dims, in the same order, as the stored tensor, so dim ``d``
of the view is dim :func:`stored_dim` of the stored tensor and the parameter
is permuted with the units it meets there. Any other reshape (a transpose, a
merge or split of dims) is not a singleton view and is refused by the caller.
"""

from __future__ import annotations

from typing import Sequence

#: ``stored_dim`` result for a view dim of size 1 (the parameter is constant along the units).
CONSTANT = -1


def broadcasts(stored: Sequence[int], view: Sequence[int]) -> bool:
    """``view`` is ``stored`` itself or an ``expand`` of its singleton dims (same rank): dims map one to one."""
    return len(stored) == len(view) and all(s == v or s == 1 for s, v in zip(stored, view))


def stored_dim(stored: Sequence[int], view: Sequence[int], d: int) -> int | None:
    """The stored tensor's dim behind dim ``d`` of ``view``; ``CONSTANT``; or ``None`` if not a singleton view."""
    real_s = [i for i, n in enumerate(stored) if n != 1]
    real_v = [i for i, n in enumerate(view) if n != 1]
    if [stored[i] for i in real_s] != [view[i] for i in real_v]:
        return None
    if d < 0 or d >= len(view) or view[d] == 1:
        return CONSTANT
    return real_s[real_v.index(d)]

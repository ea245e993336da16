"""Constants that are constant along some dims: ``expand`` of a singleton dim, followed through shape operations.

A mask built as ``mask.view(1, W, 1, N, N).expand(B, -1, heads, -1, -1).reshape(-1, heads, N, N)`` (Swin's
shifted windows) has a heads dim of size ``heads``, but every value along it is the same: adding it to
scores that carry the heads is permutation-equivariant. ``Val.bcast`` lists such dims of a constant
(no units, no parameter, no network input); the rules that refuse a constant "varying along the units" ask
:func:`constant_along` first. Followed through:

* ``expand``: every dim expanded from size 1, and every new leading dim;
* reshapes (row-major): a new dim is constant along if every old dim it draws from is, or has size 1;
* transposes: reordered; elementwise operations between constants: a dim stays if every operand is constant
  along it or has size 1 there (broadcasting); other shape-preserving elementwise maps keep it;
* anything else: nothing is known.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from wsl.space.builder import Val
from wsl.space.shape_ops import dim_order

RESHAPES = {"flatten", "view", "reshape", "unflatten", "squeeze", "unsqueeze", "view_as", "reshape_as"}
TRANSPOSES = {"transpose", "permute", "movedim", "t"}


def constant_along(v: Any, d: int) -> bool:
    """Whether constant ``v`` (a :class:`Val` or anything else) takes one value along its dim ``d``."""
    return isinstance(v, Val) and d in v.bcast


def _reshaped(old: tuple[int, ...], flags: set[int], new: tuple[int, ...]) -> tuple[int, ...]:
    """Dims of ``new`` that draw only from dims of ``old`` in ``flags`` or of size 1 (row-major regrouping)."""
    def spans(shape: tuple[int, ...]) -> list[tuple[int, int]]:
        out, hi = [], math.prod(shape)
        for n in shape:
            lo = hi // n if n else 0
            out.append((lo, hi))
            hi = lo
        return out

    old_spans, out = spans(old), []
    for j, (lo, hi) in enumerate(spans(new)):
        if new[j] == 1:
            continue
        src = [i for i, (a, c) in enumerate(old_spans) if old[i] > 1 and a < hi and c > lo]
        if src and all(i in flags for i in src) and all(
                old_spans[i][0] % lo == 0 or lo % old_spans[i][0] == 0 for i in src):
            out.append(j)
    return tuple(out)


def propagate(name: str, args: tuple, kwargs: dict, vargs: tuple, out: Any, elementwise: bool
              ) -> tuple[int, ...]:
    """``bcast`` of the constant result of operation ``name`` (``elementwise``: it maps values one to one)."""
    if not isinstance(out, torch.Tensor) or not vargs or not isinstance(vargs[0], Val):
        return ()
    x, shape = vargs[0], tuple(out.shape)
    flags = set(x.bcast)
    if name == "expand":
        lead = len(shape) - x.ndim
        return tuple(sorted({d for d in range(lead) if shape[d] > 1} | {
            d + lead for d in range(x.ndim) if (x.shape[d] == 1 and shape[d + lead] > 1) or d in flags}))
    if name in RESHAPES:
        return _reshaped(tuple(x.shape), flags, shape)
    if name in TRANSPOSES:
        order = dim_order(name, x.ndim, args[1:], kwargs)
        return tuple(i for i, o in enumerate(order) if o in flags)
    tensors = [(v, t) for v, t in zip(vargs, args) if isinstance(t, torch.Tensor) and t.dim() > 0]
    if elementwise and shape and all(isinstance(v, Val) for v, _ in tensors) and all(t.dim() <= len(shape) for _, t in tensors):
        keep = []
        for d in range(len(shape)):
            ok = True
            for v, t in tensors:
                k = d - (len(shape) - t.dim())
                ok = ok and (k < 0 or t.shape[k] == 1 or k in v.bcast)
            if ok and shape[d] > 1:
                keep.append(d)
        return tuple(keep)
    return ()

"""Attention products: ``matmul``/``bmm`` between activations and ``scaled_dot_product_attention``.

``a @ c`` with ``a: (..., n, k)`` and ``c: (..., k, m)`` sums over ``k``, so
the units of ``a``'s last dim and ``c``'s ``-2`` dim must be permuted alike
(unified); the batch dims meet elementwise (unified, with broadcasting); the
result carries ``a``'s ``n`` and ``c``'s ``m``. For attention that is the
whole story of heads: ``q @ k^T`` contracts the inner pieces of the q and k
groups (tying them, and so their heads) and keeps the heads as a batch dim;
``softmax(scores) @ v`` ties v's heads to the same heads and keeps v's inner
piece, so v units permute inside heads independently of q/k.

``scaled_dot_product_attention(q, k, v, attn_mask)`` is the same two
products: the token dims of q, k and v must carry no units, a mask that
carries units (a relative position bias per head) meets the heads, and with
``enable_gqa`` each key/value head is repeated for its group of query heads
(a fixed factor after the kv heads). When q, k and v are three projections of
equal size whose heads are nested groups, the spec also gets the parameter
graph's attention edges (``attn_qk`` pairing q and k units, ``attn_kv``
pairing k and v units of a head), as for the attention layer rules.

A matrix product with a parameter (``x @ W``) is a dense layer: see
:func:`wsl.space.functional_layers.matmul_param`.
"""

from __future__ import annotations

from typing import Any

import torch

from wsl.errors import UnsupportedLayerError
from wsl.space.broadcast import constant_along
from wsl.space.builder import SpecBuilder, Val
from wsl.space.unit_layout import Layout, has_units, layout_of, nest_pieces, normalize, parent, to_val, unify


def _lay(b: SpecBuilder, path: str, v: Any, t: Any) -> Layout:
    if isinstance(v, Val) and v.site is not None:
        return nest_pieces(b, path, layout_of(b, v, path))
    return tuple(((None, int(n)),) for n in t.shape)


def _batch(lay: Layout, nd: int) -> list[Any]:
    return [((None, 1),)] * (nd - len(lay)) + list(lay)


def _meet(b: SpecBuilder, path: str, what: str, x: Any, y: Any) -> None:
    """Two same-index dims meet: unify when both carry units; a non-unit dim of size > 1 meeting units is refused
    unless the units are an inner head piece (then it is made rigid)."""
    try:
        if has_units(x) and has_units(y):
            unify(b, path, x, y)
        elif has_units(x) or has_units(y):
            u, other = (x, y) if has_units(x) else (y, x)
            n = 1
            for f in other:
                n *= int(f[1])
            if n > 1:
                unify(b, path, u, ((None, n),))
    except UnsupportedLayerError as e:
        raise UnsupportedLayerError(path, what, str(e).split(": ", 1)[-1]) from e


def _matmul(b: SpecBuilder, path: str, a: Any, c: Any, ta: torch.Tensor, tc: torch.Tensor, out: torch.Tensor,
            name: str) -> Val:
    if ta.dim() < 2 or tc.dim() < 2:
        raise UnsupportedLayerError(path, f"function '{name}'", "a vector product with units")
    nd = out.dim()
    la, lc = _lay(b, path, a, ta), _lay(b, path, c, tc)
    _meet(b, path, f"function '{name}'", la[-1], lc[-2])
    ba, bc = _batch(la[:-2], nd - 2), _batch(lc[:-2], nd - 2)
    for x, y in zip(ba, bc):
        _meet(b, path, f"function '{name}'", x, y)
    la, lc = _lay(b, path, a, ta), _lay(b, path, c, tc)
    ba, bc = _batch(la[:-2], nd - 2), _batch(lc[:-2], nd - 2)
    batch = [x if has_units(x) else y if has_units(y) else ((None, int(out.shape[i])),)
             for i, (x, y) in enumerate(zip(ba, bc))]
    lay = tuple(batch) + (la[-2], lc[-1])
    site = c.site if isinstance(c, Val) and c.site is not None and has_units(lc[-1]) else \
        a.site if isinstance(a, Val) and a.site is not None else c.site
    res = to_val(b, site, lay, tuple(out.shape), path)
    pending = b.scratch.setdefault("attention_ops.scores", {})
    if isinstance(a, Val) and a.site in pending and isinstance(c, Val) and c.site is not None:
        _links(b, path, *pending[a.site], c.site)  # softmax(q k^T) @ v
    elif isinstance(a, Val) and isinstance(c, Val) and a.site is not None and c.site is not None \
            and res.site is not None and not has_units(la[-2]) and not has_units(lc[-1]):
        pending[res.site] = (a.site, c.site)  # q @ k^T: scores whose units are the heads only
    return res


def _arg(args: tuple, kwargs: dict, i: int, key: str, default: Any = None) -> Any:
    return kwargs.get(key, args[i] if len(args) > i else default)


def _sdpa(b: SpecBuilder, path: str, args: tuple, kwargs: dict, vargs: tuple, vkwargs: dict, out: Any) -> Val:
    q, k, v = args[:3]
    vq, vk, vv = (list(vargs) + [None] * 3)[:3]
    mask, vmask = _arg(args, kwargs, 3, "attn_mask"), _arg(vargs, vkwargs, 3, "attn_mask")
    where = "function 'scaled_dot_product_attention'"
    reps = q.shape[-3] // k.shape[-3] if q.dim() >= 3 and k.dim() >= 3 else 1

    def layouts() -> tuple[Layout, Layout, Layout]:
        lq, lk, lv = _lay(b, path, vq, q), _lay(b, path, vk, k), _lay(b, path, vv, v)
        if reps > 1 and _arg(args, kwargs, 7, "enable_gqa", False):
            lk = lk[:-3] + (normalize(b, lk[-3] + ((None, reps),)),) + lk[-2:]
            lv = lv[:-3] + (normalize(b, lv[-3] + ((None, reps),)),) + lv[-2:]
        return lq, lk, lv

    lq, lk, lv = layouts()
    if any(has_units(lay[-2]) for lay in (lq, lk, lv)):
        raise UnsupportedLayerError(path, where, "the token dim of q, k or v carries units")
    nd = q.dim()
    _meet(b, path, where, lq[-1], lk[-1])  # the contraction first, as q @ k^T (grouped-query heads resolve)
    lq, lk, lv = layouts()
    unify_all = [(x, y) for x, y in zip(_batch(lq[:-2], nd - 2), _batch(lk[:-2], nd - 2))]
    unify_all += [(x, y) for x, y in zip(_batch(lq[:-2], nd - 2), _batch(lv[:-2], nd - 2))]
    for x, y in unify_all:
        _meet(b, path, where, x, y)
    if isinstance(vmask, Val) and vmask.site is not None:
        lm = _batch(_lay(b, path, vmask, mask), nd)
        if has_units(lm[-1]) or has_units(lm[-2]):
            raise UnsupportedLayerError(path, where, "the attention mask varies along units of its token dims")
        lq = _lay(b, path, vq, q)
        for x, y in zip(_batch(lq[:-2], nd - 2), lm[:-2]):
            _meet(b, path, where, x, y)
    elif isinstance(vmask, Val) and (vmask.raw or vmask.param):
        raise UnsupportedLayerError(path, where, "the attention mask is a network input or a parameter")
    elif isinstance(mask, torch.Tensor):  # a constant mask must not tell heads (or units) apart
        lq = _lay(b, path, vq, q)
        off = nd - mask.dim()
        for i, dim in enumerate(_batch(lq[:-2], nd - 2)):
            k = i - off
            if has_units(dim) and 0 <= k < mask.dim() and mask.shape[k] > 1 and not constant_along(vmask, k):
                raise UnsupportedLayerError(path, where, f"the constant attention mask varies along dim {i}, which "
                                            "carries units (heads)")
    lq, lv = _lay(b, path, vq, q), _lay(b, path, vv, v)
    batch = [x if has_units(x) else y for x, y in zip(_batch(lq[:-2], nd - 2), _batch(lv[:-2], nd - 2))]
    lay = tuple(batch) + (lq[-2], lv[-1])
    site = vv.site if isinstance(vv, Val) and vv.site is not None else None
    res = to_val(b, site, lay, tuple(out.shape), path)
    if all(isinstance(x, Val) and x.site is not None for x in (vq, vk, vv)):
        _links(b, path, vq.site, vk.site, vv.site)
    return res


def _links(b: SpecBuilder, path: str, *sites: int) -> None:
    """The attention edges of the parameter graph, when q, k, v are equal-size projections nested in heads
    (their groups are then named as the attention layer rules name them: ``qk``, ``v``, ``head``)."""
    groups = [b.find(b.site_group(s)) for s in sites]
    if len(set(sites)) != 3 or any(g in b.defs for g in groups) or groups[0] != groups[1]:
        return
    heads = [parent(b, g) for g in groups]
    if heads[0] is None or heads[0] != heads[2] or b.size(groups[0]) != b.size(groups[2]):
        return
    attrs = (("heads", b.size(heads[0])),)
    module = path.split(":", 1)[0]
    b.connect("attn_qk", sites[0], sites[1], module, attrs=attrs)
    b.connect("attn_kv", sites[1], sites[2], module, attrs=attrs)
    for g, kind, name in ((groups[0], "qk", "qk"), (groups[2], "v", "v"), (heads[0], "head", "heads")):
        if b.groups[g].kind in ("hidden", "head"):
            b.groups[g].kind, b.groups[g].name = kind, f"{module}:{name}"


def handle(b: SpecBuilder, path: str, name: str, args: tuple, kwargs: dict, vargs: tuple, vkwargs: dict,
           out: Any) -> Any:
    if name == "scaled_dot_product_attention":
        return _sdpa(b, path, args, kwargs, vargs, vkwargs, out)
    a, c = (list(vargs) + [None, None])[:2]
    if any(isinstance(x, Val) and (x.param or x.raw) for x in (a, c)):
        from wsl.space.functional_layers import matmul_param

        return matmul_param(b, path, a, c, args[0], args[1], out)
    return _matmul(b, path, a, c, args[0], args[1], out, name)

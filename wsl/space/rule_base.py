"""Shared pieces of the layer rules: where a layer reads its units, and how a dense weight is recorded."""

from __future__ import annotations

from typing import Any

from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space.builder import SpecBuilder, Val


def kind_of(mod: nn.Module | str) -> str:
    return mod if isinstance(mod, str) else type(mod).__name__


def feature_in(b: SpecBuilder, x: Val, path: str, mod: nn.Module | str, size: int, dim: str) -> tuple[int, tuple]:
    """Site and factors of the units a layer reads along dim ``"last"`` or ``"channel"``.

    Units merged back from heads may hold pieces of a group around a fixed
    factor (grouped-query attention's output): see :func:`wsl.space.definitions.dense_input`.
    """
    if isinstance(x, (tuple, list)) or not isinstance(x, Val):
        raise UnsupportedLayerError(path, kind_of(mod), "its input is not a single tensor")
    want = x.ndim - 1 if dim == "last" else 1
    x = b.resolve_raw(x)
    if x.raw is not None:
        if x.ndim < 2 or x.shape[want] != size:
            raise UnsupportedLayerError(path, kind_of(mod), f"input of shape {x.shape} does not have {size} features on dim {want}")
        x = b.resolve_raw_at(x, want, path)
    if x.site is None:
        raise UnsupportedLayerError(path, kind_of(mod), "its input carries no units (a constant or an integer tensor?)")
    if x.split or any(f[0] is not None and b.find(f[0]) in b.segments for f in x.factors):
        from wsl.space.definitions import dense_input

        x = dense_input(b, x, want, path, kind_of(mod))
    if x.fdim != want:
        raise UnsupportedLayerError(
            path, kind_of(mod), f"it mixes dim {want} of its input, but the units are on dim {x.fdim} "
            "(e.g. token-mixing over a sequence axis is not supported)")
    n = 1
    for f in x.factors:
        n *= f[1]
    if n != size:
        raise UnsupportedLayerError(path, kind_of(mod), f"expects {size} input features, the input provides {n}")
    return x.site, x.factors


def out_val(out: Any, site: int, group: int, size: int, fdim: int | None = None) -> Val:
    shape = tuple(out.shape)
    return Val(shape=shape, site=site, fdim=len(shape) - 1 if fdim is None else fdim, factors=((group, size),))


def dense(b: SpecBuilder, path: str, op: str, src: int, src_fac: tuple, n_out: int, w: str,
          w_shape: tuple[int, ...], bias: str | None, transposed: bool = False,
          extra_axes: tuple = (), attrs: tuple = (), group: int | None = None,
          site_kind: str = "neurons") -> tuple[int, int]:
    """Record a dense weight ``(out, in, *extra)`` (``(in, out)`` if transposed)."""
    g = b.new_group(n_out, "hidden", path) if group is None else group
    site = b.new_site(g, path, site_kind, b.depth(src) + 1)
    out_ax = (((g, n_out),),)
    in_ax = (tuple(src_fac),)
    axes = ((in_ax, out_ax) if transposed else (out_ax, in_ax)) + tuple(extra_axes)
    b.add_tensor(w, w_shape, "weight", path, op, axes)
    b.connect(op, src, site, path, tensor=w, part=(0,) * len(w_shape),
              src_axis=0 if transposed else 1, dst_axis=1 if transposed else 0, attrs=attrs)
    if bias is not None:
        b.add_tensor(bias, (n_out,), "bias", path, op, (out_ax,))
        site = b.attach(site, "bias", bias, path, part=(0,))
    return g, site

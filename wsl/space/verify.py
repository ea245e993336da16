"""Check a layer's symmetry rule by running it: permute, compare, refuse on mismatch.

The rules in :mod:`wsl.space.handlers` are written for the layers of
``torch.nn``. A layer that only *looks* like one -- a subclass of ``Conv2d``
with a gain, a ``Linear`` under weight normalization, a third-party attention
module, a layer with forward hooks -- may compute something the rule does not
describe. For such layers the tracer calls :func:`check_layer` right after the
handler has recorded the layer's tensors:

1. copy the layer and give every tensor the handler claimed fresh random
   values (default initialisations hide bugs: a gain of 1 permutes to itself);
2. draw a random permutation of every unit group the layer touches (nested
   groups keep their block structure);
3. run the copy on the example input, and a second copy whose claimed tensors
   and unit-carrying inputs were permuted by the rule;
4. the second output must equal the first, permuted along its unit axis.

If it does not, the rule would silently change the network's function, and
:class:`~wsl.errors.UnsupportedLayerError` names the layer instead.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space.axes import axis_index, permute_tensor
from wsl.space.builder import SpecBuilder, Val

#: Relative tolerance of the output comparison, per dtype (float32 sums reorder under permutation).
_RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def needs_check(mod: nn.Module) -> bool:
    """Layers whose rule is not guaranteed by construction: anything outside ``torch.nn``,
    layers with forward hooks, and parametrized layers (weight normalization)."""
    if not type(mod).__module__.startswith("torch.nn.modules"):
        return True
    return bool(mod._forward_pre_hooks or mod._forward_hooks)


def _first(x: Any) -> Any:
    return x[0] if isinstance(x, (tuple, list)) and x else x


class _Perms:
    """Random permutations of the builder's groups, drawn lazily per union-find root."""

    def __init__(self, b: SpecBuilder, gen: torch.Generator) -> None:
        self.b, self.gen, self.by_root = b, gen, {}  # type: dict[int, torch.Tensor]

    def __call__(self, g: int) -> torch.Tensor:
        r = self.b.find(g)
        if r not in self.by_root:
            grp, n = self.b.groups[r], self.b.size(r)
            if grp.parent is None:
                p = torch.randperm(n, generator=self.gen)
            else:
                parent = self(grp.parent)
                inner = n // parent.numel()
                within = torch.argsort(torch.rand(parent.numel(), inner, generator=self.gen), dim=1)
                p = (parent.unsqueeze(1) * inner + within).flatten()
            self.by_root[r] = p
        return self.by_root[r]

    def for_factors(self, factors: Any) -> dict[int, torch.Tensor]:
        return {f[0]: self(f[0]) for seg in factors for f in seg if f[0] is not None}


def _permute_unit_tensor(t: torch.Tensor, v: Val, perms: _Perms) -> torch.Tensor:
    assert v.fdim is not None
    idx = axis_index(v.segments, perms.for_factors(v.segments))  # one segment, or one per concatenated part
    t = t.index_select(v.fdim, idx.to(t.device))
    if v.side is not None:  # token-mixing hidden units on a second axis
        t = t.index_select(v.side[0], perms(v.side[1]).to(t.device))
    return t


def _randomize(t: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    noise = torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device)
    if bool((t > 0).all()):  # scales and variances stay positive
        return (t.double() * torch.exp(0.3 * noise)).to(t.dtype)
    spread = float(t.double().abs().mean()) + 0.1
    return (t.double() + 0.5 * spread * noise).to(t.dtype)


def check_layer(b: SpecBuilder, path: str, mod: nn.Module, args: tuple, kwargs: dict,
                vargs: list[Any], out: Any, oval: Any, seed: int = 0) -> None:
    """Raise :class:`UnsupportedLayerError` unless the recorded rule preserves ``mod``'s function."""
    o, ov = _first(out), _first(oval)
    if not (isinstance(o, torch.Tensor) and o.is_floating_point() and isinstance(ov, Val) and ov.has_units):
        return  # the output carries no units: nothing the rule could get wrong here
    if o.device.type == "meta":
        return  # no values to compare (tracing a configuration without weights): the shape rules stand alone
    if any(isinstance(v, Val) and v.has_units for v in _flat(list(kwargs.values()))):
        return
    gen = torch.Generator().manual_seed(seed)
    perms = _Perms(b, gen)
    pargs = []
    for a, v in zip(args, vargs):
        v = b.resolve_raw(v) if isinstance(v, Val) else v
        if isinstance(v, Val) and v.raw is not None:
            return  # an input whose unit axis the layer never declared
        if isinstance(a, torch.Tensor) and isinstance(v, Val) and v.has_units:
            a = _permute_unit_tensor(a, v, perms)
        pargs.append(a)
    pargs.extend(args[len(vargs):])
    prefix = path + "."
    claimed = {n[len(prefix):]: t for n, t in b.tensors.items() if n.startswith(prefix) or not path}
    ref = copy.deepcopy(mod)
    state = ref.state_dict(keep_vars=True)
    with torch.no_grad():
        for rel in claimed:
            if rel in state and state[rel].is_floating_point():
                state[rel].copy_(_randomize(state[rel], gen))
        moved = copy.deepcopy(ref)
        mstate = moved.state_dict(keep_vars=True)
        for rel, spec in claimed.items():
            if rel in mstate:
                axes = spec.axes
                mstate[rel].copy_(permute_tensor(mstate[rel].detach(), axes, perms.for_factors(
                    [seg for ax in axes for seg in ax]), batched=False, diagonal=spec.diagonal))
        y = _first(ref(*args, **kwargs))
        y_moved = _first(moved(*pargs, **kwargs))
    want = _permute_unit_tensor(y, ov, perms)
    scale = float(want.double().abs().max()) if want.numel() else 0.0
    err = float((y_moved.double() - want.double()).abs().max()) if want.numel() else 0.0
    rtol = _RTOL.get(want.dtype, 1e-2)
    if not err <= rtol * scale + 1e-30 and not (scale == 0 and err == 0):
        unclaimed = sorted(set(mod.state_dict()) - set(claimed))
        extra = f"; tensors no rule claims: {unclaimed}" if unclaimed else ""
        raise UnsupportedLayerError(
            path, type(mod).__name__,
            f"permuting its units by the rule for {_base_name(mod)} changes its output (max relative error "
            f"{err / max(scale, 1e-30):.2g}){extra}; its forward() or parameters do something that rule "
            "does not describe")


def _base_name(mod: nn.Module) -> str:
    for cls in type(mod).__mro__:
        if cls.__module__.startswith("torch.nn.modules"):
            return cls.__name__
    return type(mod).__name__


def _flat(xs: list[Any]) -> list[Any]:
    out: list[Any] = []
    for x in xs:
        out.extend(_flat(list(x)) if isinstance(x, (list, tuple)) else [x])
    return out

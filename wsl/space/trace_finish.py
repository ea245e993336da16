"""From a builder that ran a network to its spec: outputs fixed, every state_dict entry accounted for.

:func:`finish_spec` fixes the groups of the network's outputs, resolves every
state_dict entry (claimed by a rule, an alias of a claimed tensor, tied to
another claimed name -- their groups are then tied --, or provably untouched:
:func:`resolve_entries`), writes group definitions into the tensors
(:func:`wsl.space.unit_layout.apply_definitions`) and builds the
:class:`~wsl.space.spec.WeightSpaceSpec`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from wsl.errors import UnsupportedLayerError
from wsl.space.builder import SpecBuilder, Val
from wsl.space.spec import WeightSpaceSpec
from wsl.space.definitions import apply_definitions, prune_derived_sites


def new_builder(module: nn.Module) -> tuple[SpecBuilder, dict[str, torch.Tensor]]:
    state = module.state_dict(keep_vars=True)
    b = SpecBuilder()
    b.param_shapes = {k: tuple(v.shape) for k, v in state.items()}
    b.buffer_names = {k for k, _ in module.named_buffers()}
    return b, dict(state)


def _output_groups(b: SpecBuilder, v: Val) -> list[int]:
    """Every group whose units an output tensor carries (heads and their parts included)."""
    from wsl.space.segments import leaves
    from wsl.space.unit_layout import StaleUnits, layout_of, unit_groups

    groups = [b.site_group(s) for s in v.unit_sites]  # several for an output concatenated along its units
    if v.site is None and not v.split:
        return groups
    try:
        groups += [g for dim in layout_of(b, v) for g in unit_groups(dim)]
    except StaleUnits:
        groups += [leaf for dim in v.split or ((v.fdim, v.factors),) for f in dim[1] if f[0] is not None
                   for _, _, leaf in leaves(b, f[0])]
    return groups


def finish_spec(b: SpecBuilder, module: nn.Module, state: dict[str, torch.Tensor], inputs: tuple | dict,
            outputs: list[Any], frontend: str) -> WeightSpaceSpec:
    for v in _flatten_vals(outputs):
        for grp in (_output_groups(b, v) if v.has_units or v.split else []):
            g = b.find(grp)
            b.groups[g].fixed = True
            if b.groups[g].kind in ("hidden", "channel"):
                b.groups[g].kind = "output"
    order, aliases, unread = resolve_entries(b, module, state)
    tensors = list(inputs.values()) if isinstance(inputs, dict) else list(inputs)
    meta = {"input_shapes": tuple(tuple(t.shape[1:]) for t in tensors if isinstance(t, torch.Tensor)),
            "input_dtypes": tuple(str(t.dtype).replace("torch.", "") for t in tensors if isinstance(t, torch.Tensor)),
            "unread": tuple(unread), "tied": tuple(b.tied), "module": type(module).__name__,
            "activations": tuple(sorted(b.activations))}
    if isinstance(inputs, dict):
        meta["input_names"] = tuple(k for k, t in inputs.items() if isinstance(t, torch.Tensor))
    if frontend != "fx":
        meta["frontend"] = frontend
    if b.scratch.get("export.dropped_outputs"):
        meta["dropped_outputs"] = tuple(b.scratch["export.dropped_outputs"])  # e.g. a key/value cache
    apply_definitions(b)
    prune_derived_sites(b)
    return b.finish(order, aliases, meta)


def _flatten_vals(x: Any) -> list[Val]:
    if isinstance(x, Val):
        return [x]
    if isinstance(x, dict):
        return [v for item in x.values() for v in _flatten_vals(item)]
    if isinstance(x, (list, tuple)):
        return [v for item in x for v in _flatten_vals(item)]
    return []


def resolve_entries(b: SpecBuilder, module: nn.Module, state: dict[str, torch.Tensor]
                     ) -> tuple[list[tuple[str, tuple[int, ...], bool]], dict[str, str], list[str]]:
    """Every state_dict entry is claimed by a rule, an alias of a claimed tensor, or provably untouched.

    A floating tensor no rule claimed is accepted only if no permutation can
    concern it: it has one element, it is never read by the traced forward()
    (it cannot affect the function), or none of its axes has the size of a
    permutable group. Anything else raises :class:`UnsupportedLayerError`
    naming it: leaving it unpermuted could silently change the function.
    Returns the state_dict order, the aliases and the never-read tensors.
    """
    by_id: dict[int, str] = {}
    for name in b.tensors:
        by_id[id(state[name])] = name
    aliases: dict[str, str] = {}
    unread: list[str] = []
    order = []
    seen: dict[int, str] = {}
    b.tied = []
    sizes = {b.size(i) for i in range(len(b.groups)) if b.find(i) == i and not b.groups[i].fixed}
    for name, t in state.items():
        order.append((name, tuple(t.shape), name in b.buffer_names))
        if name in b.tensors:
            if id(t) in seen:  # tied weights claimed by two layers (e.g. lm_head and wte): permuted alike
                b.tied.append((name, seen[id(t)]))
                b.unify_axes(name, b.tensors[seen[id(t)]].axes, b.tensors[name].axes, name.rsplit(".", 1)[0])
            seen.setdefault(id(t), name)
            continue
        if name in b.extras:
            continue
        if id(t) in by_id:
            aliases[name] = by_id[id(t)]
            continue
        if not t.is_floating_point() or t.numel() == 1:
            b.extras.append(name)
            continue
        if name not in b.read:
            unread.append(name)
            b.extras.append(name)
            continue
        if not any(n in sizes for n in t.shape):
            b.extras.append(name)
            continue
        owner = name.rsplit(".", 1)[0] if "." in name else ""
        kind = type(module.get_submodule(owner)).__name__ if owner else type(module).__name__
        raise UnsupportedLayerError(owner, kind, f"no symmetry rule claims its tensor '{name}' of shape "
                                    f"{tuple(t.shape)}, which forward() reads and which has an axis the size of "
                                    "a permutable unit group; permuting the network could change its function")
    both = [n for n in dict.fromkeys(b.extras) if n in b.tensors]
    if both:  # one use needs it permuted with units, another needs it left alone
        owner = both[0].rsplit(".", 1)[0] if "." in both[0] else ""
        raise UnsupportedLayerError(owner, "shared tensor", f"'{both[0]}' is read both along unit axes and as a "
                                    "constant that no permutation may move")
    b.extras = list(dict.fromkeys(b.extras))
    return order, aliases, unread

"""Do two networks share one weight space? If not, say where they first differ."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from wsl.errors import SpaceMismatchError, WslError
from wsl.space import WeightSpace

StateDict = Mapping[str, torch.Tensor]


def first_difference(a: WeightSpace, b: WeightSpace) -> str | None:
    """A one-line description of the first structural difference between two spaces, or ``None``."""
    if a.signature == b.signature:
        return None
    ta, tb = list(a.tensors.values()), list(b.tensors.values())
    for i, (x, y) in enumerate(zip(ta, tb)):
        if x.name != y.name:
            return f"tensor {i} is '{x.name}' in one and '{y.name}' in the other"
        if x.shape != y.shape:
            return f"'{x.name}' has shape {x.shape} in one and {y.shape} in the other"
        if x.axes != y.axes:
            return f"'{x.name}' has the same shape but different unit groups (axes {x.axes} vs {y.axes})"
    if len(ta) != len(tb):
        longer, n = (ta, len(tb)) if len(ta) > len(tb) else (tb, len(ta))
        return f"one has {len(longer) - n} more tensors, starting with '{longer[n].name}'"
    for ga, gb in zip(a.groups, b.groups):
        if ga != gb:
            return f"unit group {ga.id} differs ({a.group_name(ga.id)} vs {b.group_name(gb.id)})"
    return "their graphs (sites or connections) differ"


def as_state_dict(x: Any, what: str) -> dict[str, torch.Tensor]:
    if isinstance(x, nn.Module):
        return {k: v.detach() for k, v in x.state_dict().items()}
    if isinstance(x, Mapping):
        return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in x.items()}
    raise WslError(f"{what}: expected an nn.Module or a state_dict, got {type(x).__name__}")


def shared_space(ref: Any, model: Any, space: WeightSpace | None
                 ) -> tuple[WeightSpace, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The space both networks live in, and their state_dicts checked against it.

    Two networks of different spaces are refused by their first difference.
    """
    if space is None:
        if not isinstance(ref, nn.Module):
            raise WslError("pass space= (a WeightSpace) when aligning state_dicts; it cannot be traced from tensors")
        space = WeightSpace.from_module(ref)
        if isinstance(model, nn.Module):
            other = WeightSpace.from_module(model)
            diff = first_difference(space, other)
            if diff is not None:
                raise SpaceMismatchError(f"the two networks have different weight spaces: {diff}")
    sds = []
    for name, x in (("reference", ref), ("model", model)):
        sd = as_state_dict(x, name)
        try:
            space.check(sd, where=name)
        except WslError as e:
            raise SpaceMismatchError(f"the {name} does not fit the weight space: {e}") from e
        sds.append(sd)
    return space, sds[0], sds[1]

"""Shared checks for the symmetry tests: randomised weights, two random permutations, function compared.

:func:`assert_preserves` is the property every symmetry rule must satisfy:
for a module with every float state entry drawn at random (norm scales,
biases and statistics included, so that no default value hides a mistake),
two random elements of the traced permutation group each change the weights,
leave every output tensor unchanged, and are undone by their inverse.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from wsl.space import WeightSpace, invert_permutation, random_permutation


def randomize(m: nn.Module, seed: int = 0, std: float = 0.5) -> nn.Module:
    """Every float entry of ``m``'s state random (variances positive), in place; ``m`` in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in m.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * std)
    return m.eval()


def tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a forward's output (tuples, lists, dicts and ``ModelOutput``s flattened)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in tensors(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in tensors(v)]
    return []


def call(m: nn.Module, inputs: Any) -> list[torch.Tensor]:
    with torch.no_grad():
        if isinstance(inputs, dict):
            return tensors(m(**inputs))
        return tensors(m(*inputs) if isinstance(inputs, tuple) else m(inputs))


def double_inputs(inputs: Any) -> Any:
    def cast(x: Any) -> Any:
        return x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x

    if isinstance(inputs, dict):
        return {k: cast(v) for k, v in inputs.items()}
    if isinstance(inputs, tuple):
        return tuple(cast(v) for v in inputs)
    return cast(inputs)


def assert_preserves(module: nn.Module, inputs: Any, frontend: str = "auto", seeds: tuple[int, ...] = (1, 2),
                     rtol: float = 1e-9, space: WeightSpace | None = None, std: float = 0.5) -> WeightSpace:
    """Trace ``module`` (made float64, randomised), then check two random permutations (see module docstring).

    ``space``: the module's weight space traced before (e.g. on the meta device), to check instead.
    ``std``: spread of the random weights (deep networks need a smaller one to keep activations finite
    and attention away from ties that rounding decides).
    """
    module = randomize(copy.deepcopy(module).double(), std=std)
    inputs = double_inputs(inputs)
    space = space or WeightSpace.from_module(module, inputs, frontend=frontend)
    sd = module.state_dict()
    assert space.num_elements == sum(t.numel() for t in sd.values())
    ref = call(module, inputs)
    scale = max(float(t.abs().max()) for t in ref if t.is_floating_point())
    for seed in seeds:
        perms = random_permutation(space, torch.Generator().manual_seed(seed))
        assert perms, "no permutable group"
        permuted = space.permute(sd, perms)
        assert any(not torch.equal(sd[k], permuted[k]) for k in sd), "the permutation moved nothing"
        other = copy.deepcopy(module)
        other.load_state_dict(permuted)
        for a, b in zip(ref, call(other, inputs)):
            if a.is_floating_point():
                err = float((a - b).abs().max()) if a.numel() else 0.0
                assert err <= rtol * scale + 1e-12, f"seed {seed}: output changed by {err:.3g} (scale {scale:.3g})"
            else:
                assert torch.equal(a, b)
        back = space.permute(permuted, invert_permutation(perms))
        assert all(torch.equal(back[k], sd[k]) for k in sd)
    return space


def output_changes(module: nn.Module, inputs: Any, state: dict[str, torch.Tensor]) -> float:
    """Largest output change when ``module`` (float64) loads ``state``."""
    other = copy.deepcopy(module)
    other.load_state_dict(state)
    return max(float((a - b).abs().max()) for a, b in zip(call(module, inputs), call(other, inputs))
               if a.is_floating_point())

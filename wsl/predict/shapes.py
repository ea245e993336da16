"""The input shape at which a network is traced for a prediction.

Tracing needs an example input. A module that carries ``wsl_input_shape`` (every
``wsl`` architecture, every zoo model) or comes with an explicit example input
is traced at that. Any other module is traced at the training input shape of
the predictor that will read it -- its probe input shape, else the input shapes
of its training family -- then at the same number of elements flattened (an
MLP on flattened images, as the probes also run it), and only as a last resort
at a shape guessed from its first layer (e.g. 32x32 for a Conv2d), which makes
the family check warn that the shape differs.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from wsl.errors import WslError
from wsl.space import WeightSpace


def training_shapes(config: Mapping[str, Any]) -> list[tuple[int, ...]]:
    """The input shapes (no batch axis) a predictor was trained on, most specific first."""
    shapes: list[tuple[int, ...]] = []
    probe_shape = ((config.get("input") or {}).get("probes") or {}).get("input_shape")
    for s in ([probe_shape] if probe_shape else []) + list((config.get("family") or {}).get("input_shapes", [])):
        t = tuple(int(v) for v in s)
        if t and t not in shapes:
            shapes.append(t)
    return shapes


def candidate_shapes(configs: Iterable[Mapping[str, Any]]) -> list[tuple[int, ...]]:
    """Each predictor's training shapes, then the same shapes flattened, without repeats."""
    exact = [s for c in configs for s in training_shapes(c)]
    out: list[tuple[int, ...]] = []
    for s in exact + [(math.prod(s),) for s in exact]:
        if s not in out:
            out.append(s)
    return out


def _dtype(module: nn.Module) -> torch.dtype:
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def _device(module: nn.Module) -> torch.device:
    return next((p.device for p in module.parameters()), torch.device("cpu"))


def trace_for_prediction(module: nn.Module, example_input: Any, configs: Iterable[Mapping[str, Any]]
                         ) -> WeightSpace:
    """The weight space of ``module``, traced as the module docstring describes."""
    if example_input is not None or getattr(module, "wsl_input_shape", None) is not None:
        return WeightSpace.from_module(module, example_input)
    gen = torch.Generator().manual_seed(0)
    for shape in candidate_shapes(configs):
        x = torch.randn(2, *shape, generator=gen).to(device=_device(module), dtype=_dtype(module))
        try:
            return WeightSpace.from_module(module, x)
        except (WslError, RuntimeError, ValueError, TypeError, IndexError):
            continue  # the module does not take this shape: try the next one
    return WeightSpace.from_module(module)

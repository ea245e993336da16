"""Derive a weight-space spec from an ``nn.Module``: two front ends, one rule table.

The module is captured as a graph, then executed once on an example input.
While it runs, each node's output is annotated with a
:class:`~wsl.space.builder.Val` (which dims carry which units) by the layer
handlers (:mod:`wsl.space.handlers`) and the operation rules
(:mod:`wsl.space.ops`). The network's inputs and outputs become fixed groups;
every state_dict entry must be claimed by some rule, or the trace fails loudly.

Front ends (``frontend=``):

* ``"fx"``: ``torch.fx`` symbolic tracing, every layer with a rule a leaf;
* ``"export"``: ``torch.export`` (non-strict), :mod:`wsl.space.export_trace`;
  the one that ``transformers`` models survive, and the only one for
  keyword inputs (a dict);
* ``"auto"`` (default): torch.fx, and torch.export when torch.fx cannot
  capture the module or keeps whole a ``torch.nn`` layer that has no rule
  (``nn.TransformerEncoder``: torch.export reads its operations). Networks
  torch.fx traced before keep their spec.

Both run on the meta device (no weight allocated): layer checks that need
values (:mod:`wsl.space.verify`) are skipped there.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx
from torch import nn

from wsl.errors import TraceError, UnsupportedLayerError
from wsl.space.fx_trace import NoLayerRule, capture_fx, fx_run
from wsl.space.spec import WeightSpaceSpec
from wsl.space.trace_finish import finish_spec, new_builder


InputGuesser = Callable[[nn.Module], Any]
_GUESSERS: list[InputGuesser] = []
FRONTENDS = ("auto", "fx", "export")


def register_input_guesser(fn: InputGuesser) -> None:
    """Add ``fn(module) -> example input or None``, asked before the built-in guess (e.g. by :mod:`wsl.hub`
    for ``transformers`` models, whose inputs are read from their config)."""
    if fn not in _GUESSERS:
        _GUESSERS.append(fn)


def guess_example_input(module: nn.Module, batch: int = 2) -> Any:
    """An example input: from a registered guesser, ``module.wsl_input_shape`` or the module's first layer.

    The input lives on the module's device, in its floating dtype, and is drawn
    from a private generator (the global RNG is left alone).
    """
    for fn in _GUESSERS:
        got = fn(module)
        if got is not None:
            return got
    gen = torch.Generator().manual_seed(0)
    dev, dt = _param_device(module), _param_dtype(module)

    def randn(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=gen, dtype=dt).to(dev)

    def randint(high: int, *size: int) -> torch.Tensor:
        return torch.randint(0, max(1, high), size, generator=gen).to(dev)

    shape = getattr(module, "wsl_input_shape", None)
    if shape is not None:
        dtype = getattr(module, "wsl_input_dtype", "float32")
        if "int" in str(dtype):
            vocab = next((m.num_embeddings for m in module.modules() if isinstance(m, nn.Embedding)), 2)
            return (randint(vocab, batch, *shape),)
        return (randn(batch, *shape),)
    for m in module.modules():
        if isinstance(m, nn.Embedding):
            return (randint(m.num_embeddings, batch, 8),)
        if isinstance(m, nn.Linear):
            return (randn(batch, m.in_features),)
        if isinstance(m, nn.Conv1d):
            return (randn(batch, m.in_channels, 32),)
        if isinstance(m, nn.Conv2d):
            return (randn(batch, m.in_channels, 32, 32),)
        if isinstance(m, nn.Conv3d):
            return (randn(batch, m.in_channels, 8, 8, 8),)
    raise TraceError(f"cannot guess an input for {type(module).__name__}; pass example_input "
                     "(CLI: --input-shape) or set module.wsl_input_shape")


def _param_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _param_device(module: nn.Module) -> torch.device:
    devices = [t.device for t in module.parameters()] or [t.device for t in module.buffers()]
    meta = [d for d in devices if d.type == "meta"]  # a stray legacy ``torch.Tensor(n)`` stays on the CPU
    return meta[0] if meta else devices[0] if devices else torch.device("cpu")


def trace_spec(module: nn.Module, example_input: Any = None, frontend: str = "auto") -> WeightSpaceSpec:
    """Trace ``module`` and return its :class:`WeightSpaceSpec` (see the module docstring for ``frontend``).

    ``example_input`` is a tensor, a tuple of positional inputs, or a dict of
    keyword inputs (torch.export only).
    """
    if not isinstance(module, nn.Module):
        raise TraceError(f"expected an nn.Module, got {type(module).__name__}")
    if frontend not in FRONTENDS:
        raise TraceError(f"unknown tracing front end {frontend!r}; choose one of {', '.join(FRONTENDS)}")
    inputs = example_input if example_input is not None else guess_example_input(module)
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    inputs = dict(inputs) if isinstance(inputs, dict) else tuple(inputs)
    if isinstance(inputs, dict) or frontend == "export":
        if frontend == "fx":
            raise TraceError("the torch.fx front end takes positional inputs, not a dict of keyword inputs")
        return _export_spec(module, inputs)
    try:
        graph = capture_fx(module, len(inputs))
    except TraceError as fx_error:
        if frontend == "fx":
            raise
        try:
            return _export_spec(module, inputs)
        except TraceError as export_error:
            prefix = f"torch.export could not capture {type(module).__name__}: "
            if not str(export_error).startswith(prefix):
                raise
            raise TraceError(f"{fx_error} Neither could torch.export: {str(export_error)[len(prefix):]}") \
                from export_error
    try:
        return _fx_spec(module, graph, inputs)
    except NoLayerRule as fx_refusal:  # a torch.nn layer without a rule: its operations may have rules
        if frontend == "fx":
            raise
        try:
            return _export_spec(module, inputs)
        except (TraceError, UnsupportedLayerError):
            raise fx_refusal from None


def _fx_spec(module: nn.Module, graph: torch.fx.Graph, inputs: tuple) -> WeightSpaceSpec:
    b, state = new_builder(module)
    outputs = fx_run(module, graph, inputs, b, state)
    return finish_spec(b, module, state, inputs, outputs, "fx")


def _export_spec(module: nn.Module, inputs: tuple | dict) -> WeightSpaceSpec:
    from wsl.space.export_trace import export_run

    b, state = new_builder(module)
    outputs = export_run(module, inputs, b, state)
    return finish_spec(b, module, state, inputs, outputs, "export")



"""The torch.fx front end: symbolic tracing with every layer that has a rule kept as a leaf.

:func:`capture_fx` traces ``forward`` symbolically (positional inputs; keyword
arguments with defaults become constants); :func:`fx_run` executes the graph
on the example input while :class:`_Interpreter` annotates every node's
output with a :class:`~wsl.space.builder.Val`: leaf layers by their rule
(:mod:`wsl.space.handlers`, checked by running them when they are not plain
``torch.nn`` layers, :mod:`wsl.space.verify`), functions and methods by the
operation rules (:mod:`wsl.space.ops`).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.fx
from torch import nn

from wsl.errors import TraceError, UnsupportedLayerError, WslError
from wsl.space import handlers, ops
from wsl.space.builder import SpecBuilder, Val
from wsl.space.verify import check_layer, needs_check


class NoLayerRule(UnsupportedLayerError):
    """A ``torch.nn`` layer kept whole by torch.fx that no layer rule reads (``nn.TransformerEncoder``, ``nn.LSTM``):
    the torch.export front end may still read it through its operations."""


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return handlers.is_leaf(m)


def _first_line(e: BaseException) -> str:
    """An exception's message without torch.fx's appended context ("While executing ...")."""
    text = str(e).strip()
    for marker in ("\n\nWhile executing", "\nWhile executing", "\n\nOriginal traceback"):
        text = text.split(marker, 1)[0]
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(e).__name__


def _path(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    where = next(reversed(stack.values()))[0] if stack else ""
    return f"{where}:{node.name}" if where else node.name


def module_type(node: torch.fx.Node) -> str | None:
    """Class name of the module an operation ran in (from ``nn_module_stack``)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    kind = next(reversed(stack.values()))[1]
    return (kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))).rsplit(".", 1)[-1]


class _Interpreter(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, builder: SpecBuilder, state: dict[str, torch.Tensor]):
        super().__init__(gm)
        self.extra_traceback = False  # fx would append "While executing ..." lines to our one-line errors
        self.b = builder
        self.root_type = type(gm).__name__
        self.vals: dict[torch.fx.Node, Any] = {}
        self.state = state
        self.outputs: list[Any] = []

    def run_node(self, n: torch.fx.Node) -> Any:
        mod = None
        if n.op == "call_module":
            mod = self.module.get_submodule(str(n.target))
            if handlers.handler_for(mod) is None:
                raise NoLayerRule(str(n.target), type(mod).__name__, "wsl has no symmetry rule for this layer")
            prefix = f"{n.target}." if n.target else ""
            self.b.read.update(prefix + k for k in mod.state_dict(keep_vars=True))
        elif n.op == "get_attr":
            self.b.read.add(str(n.target))
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            try:
                out = getattr(self, n.op)(n.target, args, kwargs)
            except WslError:
                raise
            except Exception as e:  # the example input does not fit the network
                raise TraceError(f"running the example input through '{_path(n)}' failed: {_first_line(e)}. "
                                 "Pass a matching example input (CLI: --input-shape).") from e
        vargs = torch.fx.node.map_arg(n.args, lambda a: self.vals.get(a))
        vkwargs = torch.fx.node.map_arg(n.kwargs, lambda a: self.vals.get(a))
        self.vals[n] = self._meta(n, args, kwargs, tuple(vargs), dict(vkwargs), out)
        if mod is not None and needs_check(mod):
            check_layer(self.b, str(n.target), mod, tuple(args), dict(kwargs), list(vargs), out, self.vals[n])
        return out

    def _meta(self, n: torch.fx.Node, args: tuple, kwargs: dict, vargs: tuple, vkwargs: dict, out: Any) -> Any:
        if n.op == "placeholder":
            if not isinstance(out, torch.Tensor):
                return None
            if not out.is_floating_point():
                return Val(shape=tuple(out.shape), ids=True)
            return Val(shape=tuple(out.shape), raw=str(n.target))
        if n.op == "get_attr":
            name = str(n.target)
            if not isinstance(out, torch.Tensor):
                return None
            if name in self.state:
                if not out.is_floating_point():
                    return Val(shape=tuple(out.shape), ids=True)
                return Val(shape=tuple(out.shape), param=name)
            return Val(shape=tuple(out.shape), ids=not out.is_floating_point())
        if n.op == "call_module":
            mod = self.module.get_submodule(str(n.target))
            h = handlers.handler_for(mod)
            assert h is not None
            return h(self.b, str(n.target), mod, list(vargs), out)
        if n.op in ("call_function", "call_method"):
            try:
                return ops.handle(self.b, _path(n), n.target, args, kwargs, vargs, vkwargs, out)
            except UnsupportedLayerError as e:
                raise ops.with_module_type(e, _path(n), n.target, module_type(n) or self.root_type) from e
        if n.op == "output":
            self.outputs.append(vargs[0] if vargs else None)
            return None
        raise TraceError(f"unexpected fx node {n.op} at '{_path(n)}'")


def capture_fx(module: nn.Module, n_inputs: int) -> torch.fx.Graph:
    concrete = _concrete_args(module, n_inputs)
    try:
        return _Tracer().trace(module, concrete_args=concrete or None)
    except WslError:
        raise
    except Exception as e:
        raise TraceError(f"torch.fx could not trace {type(module).__name__}: {_first_line(e)}. Data-dependent "
                         "Python control flow in forward() cannot be traced; move it into a leaf layer.") from e


def _concrete_args(module: nn.Module, n_inputs: int) -> dict[str, Any]:
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return {}
    out = {}
    params = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for p in params[n_inputs:]:
        if p.default is not inspect.Parameter.empty:
            out[p.name] = p.default
    return out


def fx_run(module: nn.Module, graph: torch.fx.Graph, inputs: tuple, b: SpecBuilder,
           state: dict[str, torch.Tensor]) -> list[Any]:
    """Run ``graph`` (captured from ``module``) on ``inputs``, recording into ``b``; returns the output Vals."""
    gm = torch.fx.GraphModule(module, graph)
    interp = _Interpreter(gm, b, state)
    interp.root_type = type(module).__name__
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            interp.run(*inputs)
    finally:
        module.train(was_training)
    return interp.outputs

"""The ``torch.export`` front end: ATen programs, with ``torch.nn`` layers read as layers.

``torch.fx`` symbolic tracing stops inside most ``transformers`` forwards
(decorators taking ``**kwargs``, ``co_varnames is too small``, proxies used as
dict keys). ``torch.export.export(..., strict=False)`` runs the forward on
fake tensors instead -- Python control flow that depends on shapes or
configuration is simply executed -- and records the ATen operators it calls,
each with the stack of modules it ran in (``nn_module_stack``). It works on
the meta device, so a configuration is traced without allocating weights.

The program is then interpreted node by node, exactly as the torch.fx front
end does (:mod:`wsl.space.trace`):

* the operators that one call of a ``torch.nn`` layer with a rule
  (:func:`wsl.space.handlers.handler_for`) ran -- found through
  ``nn_module_stack``: ``aten.linear`` inside ``nn.Linear``, ``aten.conv1d`` and
  ``aten._weight_norm`` inside a weight-normalized ``nn.Conv1d``, ... -- are
  read as that layer by its rule, when the call has one activation input and
  one output (``nn.MultiheadAttention`` is read through its operators);
* every other operator goes to the rule table of :mod:`wsl.space.ops`, its
  ATen name mapped by :mod:`wsl.space.aten_names` (layers written as
  functions of parameters: :mod:`wsl.space.functional_layers`).

Only tensors reach the program's output: a forward returning other objects
(a key/value cache) is wrapped so that the tensors of its output, in
``dict``/``tuple``/``list`` order, are the network's outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import warnings
from typing import Any, Iterator

import torch
import torch.fx
from torch import nn

from wsl.errors import TraceError, UnsupportedLayerError, WslError
from wsl.space import handlers, ops
from wsl.space.builder import SpecBuilder, Val
from wsl.space.fx_trace import module_type as _module_type
from wsl.space.verify import check_layer, needs_check

_ROOT = "m"  #: attribute of the wrapper that holds the traced module


class _Tensors(nn.Module):
    """Calls the module; returns the tensors of its output as a flat tuple (caches and other objects dropped)."""

    def __init__(self, module: nn.Module, dropped: list[str]) -> None:
        super().__init__()
        self.m = module
        self.sink = lambda name: dropped.append(name)  # (a closure: export may copy the module, not this list)

    def forward(self, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        dropped: list[str] = []
        out = tuple(_tensors(self.m(*args, **kwargs), dropped))
        for name in dropped:
            self.sink(name)
        return out


def _tensors(x: Any, dropped: list[str] | None = None) -> Iterator[torch.Tensor]:
    """The tensors of an output: through dicts (``ModelOutput``), lists, tuples and dataclasses; other
    objects (a key/value cache: state kept between calls) are left out and their type names recorded."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _tensors(v, dropped)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _tensors(v, dropped)
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        for f in dataclasses.fields(x):
            yield from _tensors(getattr(x, f.name), dropped)
    elif x is not None and not isinstance(x, (bool, int, float, str)) and dropped is not None:
        dropped.append(type(x).__name__)


def _strip(path: str) -> str:
    return "" if path == _ROOT else path[len(_ROOT) + 1:] if path.startswith(_ROOT + ".") else path


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text[:300] + "...") if len(text) > 300 else text or type(e).__name__


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    level = logging.getLogger("torch").level
    logging.getLogger("torch").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.getLogger("torch").setLevel(level)


def capture(module: nn.Module, args: tuple, kwargs: dict) -> torch.export.ExportedProgram:
    """``torch.export`` (non-strict) of ``module`` on these inputs; :class:`TraceError` if it cannot."""
    was_training = module.training
    module.eval()
    dropped: list[str] = []
    wrapper = _Tensors(module, dropped)
    try:
        with _quiet(), torch.no_grad():
            ep = torch.export.export(wrapper, tuple(args), dict(kwargs), strict=False)
        ep.wsl_dropped_outputs = tuple(dict.fromkeys(dropped))  # type: ignore[attr-defined]
        return ep
    except WslError:
        raise
    except Exception as e:
        raise TraceError(f"torch.export could not capture {type(module).__name__}: {_one_line(e)}") from e
    finally:
        module.train(was_training)


def _is_leaf(mod: nn.Module) -> bool:
    """A ``torch.nn`` layer whose rule reads it whole (see the module docstring)."""
    return (type(mod).__module__.startswith("torch.nn.") and not isinstance(mod, nn.MultiheadAttention)
            and handlers.handler_for(mod) is not None)


class _Call:
    """One call of a leaf layer: its nodes, its activation input and its output node."""

    def __init__(self, path: str, mod: nn.Module) -> None:
        self.path, self.mod = path, mod
        self.nodes: list[torch.fx.Node] = []
        self.input: torch.fx.Node | None = None
        self.output: torch.fx.Node | None = None


def _calls(gm: torch.fx.GraphModule, root: nn.Module, owned: dict[str, int]) -> dict[torch.fx.Node, _Call]:
    """Nodes run inside a leaf layer call that can be read whole, mapped to that call."""
    calls: dict[str, _Call] = {}
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        for key, (path, _) in (n.meta.get("nn_module_stack") or {}).items():
            p = _strip(str(path))
            if not p or p == _ROOT:
                continue
            mod = root.get_submodule(p)
            if _is_leaf(mod):
                calls.setdefault(key, _Call(p, mod)).nodes.append(n)
                break
    out: dict[torch.fx.Node, _Call] = {}
    for call in calls.values():
        inside = set(call.nodes)
        own = {id(t) for t in call.mod.state_dict(keep_vars=True).values()}
        inputs = list(dict.fromkeys(i for n in call.nodes for i in n.all_input_nodes
                                    if i not in inside and owned.get(i.name) not in own))
        outputs = [n for n in call.nodes if any(u not in inside for u in n.users)]
        if len(inputs) == 1 and len(outputs) == 1:
            call.input, call.output = inputs[0], outputs[0]
            out.update((n, call) for n in call.nodes)
    return out


def _live(gm: torch.fx.GraphModule) -> set[torch.fx.Node]:
    """Nodes whose value reaches the output."""
    out = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    live, todo = {out}, [out]
    while todo:
        for i in todo.pop().all_input_nodes:
            if i not in live:
                live.add(i)
                todo.append(i)
    return live


def _path(n: torch.fx.Node) -> str:
    stack = n.meta.get("nn_module_stack")
    where = _strip(str(next(reversed(stack.values()))[0])) if stack else ""
    return f"{where}:{n.name}" if where else n.name


class _Interpreter(torch.fx.Interpreter):
    def __init__(self, ep: torch.export.ExportedProgram, module: nn.Module, b: SpecBuilder,
                 state: dict[str, torch.Tensor]) -> None:
        super().__init__(ep.graph_module)
        self.extra_traceback = False
        self.b, self.module, self.state = b, module, state
        self.root_type = type(module).__name__
        self.vals: dict[torch.fx.Node, Any] = {}
        self.outputs: list[Any] = []
        sig = ep.graph_signature
        self.kinds: dict[str, tuple[str, str]] = {}
        for spec in sig.input_specs:
            name = getattr(spec.arg, "name", None)
            if name is not None:
                self.kinds[name] = (spec.kind.name, _strip(str(spec.target)) if spec.target else name)
        positional = _positional_names(module)
        for name, (kind, target) in list(self.kinds.items()):
            if kind == "USER_INPUT" and target.startswith("args_") and target[5:].isdigit():
                i = int(target[5:])  # the wrapper's *args: name them as the module's forward does
                self.kinds[name] = (kind, positional[i] if i < len(positional) else target)
        owned = {}
        for n in ep.graph_module.graph.nodes:
            if n.op == "placeholder" and self.kinds.get(n.name, ("",))[0] in ("PARAMETER", "BUFFER"):
                t = state.get(self.kinds[n.name][1])
                owned[n.name] = id(t) if t is not None else id(_lookup(module, self.kinds[n.name][1]))
        self.calls = _calls(ep.graph_module, module, owned)
        self.live = _live(ep.graph_module)

    def run_node(self, n: torch.fx.Node) -> Any:
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            try:
                out = getattr(self, n.op)(n.target, args, kwargs)
            except WslError:
                raise
            except Exception as e:
                raise TraceError(f"running the example input through '{_path(n)}' failed: {_one_line(e)}. "
                                 "Pass a matching example input (CLI: --input-shape).") from e
        self.vals[n] = self._val(n, args, kwargs, out)
        return out

    def _val(self, n: torch.fx.Node, args: tuple, kwargs: dict, out: Any) -> Any:
        b = self.b
        if n.op == "placeholder":
            kind, target = self.kinds.get(n.name, ("USER_INPUT", n.name))
            if not isinstance(out, torch.Tensor):
                return None
            if kind in ("PARAMETER", "BUFFER") and target in self.state:
                if any(u in self.live for u in n.users):
                    b.read.add(target)
                return Val(shape=tuple(out.shape), param=target) if out.is_floating_point() else \
                    Val(shape=tuple(out.shape), ids=True)
            if kind == "USER_INPUT" and out.is_floating_point():
                return Val(shape=tuple(out.shape), raw=target)
            return Val(shape=tuple(out.shape), ids=not out.is_floating_point())
        if n.op == "output":
            self.outputs.append(torch.fx.node.map_arg(n.args[0], lambda a: self.vals.get(a)))
            return None
        if n.op != "call_function":
            return Val(shape=tuple(out.shape)) if isinstance(out, torch.Tensor) else None
        if n not in self.live:
            return None  # its value reaches no output (e.g. a slice read only for its shape)
        call = self.calls.get(n)
        if call is not None:
            return self._leaf(call, n, out)
        vargs = torch.fx.node.map_arg(n.args, lambda a: self.vals.get(a))
        vkwargs = torch.fx.node.map_arg(n.kwargs, lambda a: self.vals.get(a))
        try:
            return ops.handle(b, _path(n), n.target, args, kwargs, tuple(vargs), dict(vkwargs), out)
        except UnsupportedLayerError as e:
            raise ops.with_module_type(e, _path(n), n.target, _module_type(n) or self.root_type) from e

    def _leaf(self, call: _Call, n: torch.fx.Node, out: Any) -> Any:
        if n is not call.output:
            return None
        b, mod = self.b, call.mod
        h = handlers.handler_for(mod)
        assert h is not None and call.input is not None
        prefix = f"{call.path}." if call.path else ""
        b.read.update(prefix + k for k in mod.state_dict(keep_vars=True))
        x = self.vals.get(call.input)
        val = h(b, call.path, mod, [x], out)
        if needs_check(mod):
            check_layer(b, call.path, mod, (self.env[call.input],), {}, [x], out, val)
        return val


def _positional_names(module: nn.Module) -> list[str]:
    import inspect

    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _lookup(module: nn.Module, name: str) -> Any:
    try:
        return module.get_parameter(name)
    except (AttributeError, KeyError):
        try:
            return module.get_buffer(name)
        except (AttributeError, KeyError):
            return None


def export_run(module: nn.Module, inputs: tuple | dict, b: SpecBuilder, state: dict[str, torch.Tensor]) -> list[Any]:
    """Capture ``module`` with torch.export and interpret it into ``b``; returns the output Vals."""
    args, kwargs = ((), dict(inputs)) if isinstance(inputs, dict) else (tuple(inputs), {})
    ep = capture(module, args, kwargs)
    b.scratch["export.dropped_outputs"] = getattr(ep, "wsl_dropped_outputs", ())
    interp = _Interpreter(ep, module, b, state)
    try:
        flat = ep._graph_module_flat_inputs(args, kwargs)
    except Exception as e:  # noqa: BLE001 -- a torch-internal helper; say what failed
        raise TraceError(f"torch.export: cannot feed the example input to the captured program: {_one_line(e)}") from e
    was_training = module.training
    module.eval()
    try:
        with _quiet(), torch.no_grad():
            interp.run(*flat)
    except UnsupportedLayerError:
        raise
    finally:
        module.train(was_training)
    return interp.outputs

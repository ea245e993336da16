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
  capture the module. Networks torch.fx traced before keep their spec.

Both run on the meta device (no weight allocated): layer checks that need
values (:mod:`wsl.space.verify`) are skipped there.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
import torch.fx
from torch import nn

from wsl.errors import TraceError, UnsupportedLayerError, WslError
from wsl.space import handlers, ops
from wsl.space.builder import SpecBuilder, Val
from wsl.space.spec import WeightSpaceSpec
from wsl.space.unit_layout import apply_definitions, prune_derived_sites
from wsl.space.verify import check_layer, needs_check


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return handlers.is_leaf(m)


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


def _module_type(node: torch.fx.Node) -> str | None:
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
                raise UnsupportedLayerError(str(n.target), type(mod).__name__,
                                            "wsl has no symmetry rule for this layer")
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
                raise ops.with_module_type(e, _path(n), n.target, _module_type(n) or self.root_type) from e
        if n.op == "output":
            self.outputs.append(vargs[0] if vargs else None)
            return None
        raise TraceError(f"unexpected fx node {n.op} at '{_path(n)}'")


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
        graph = _capture_fx(module, len(inputs))
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
    return _fx_spec(module, graph, inputs)


def _capture_fx(module: nn.Module, n_inputs: int) -> torch.fx.Graph:
    concrete = _concrete_args(module, n_inputs)
    try:
        return _Tracer().trace(module, concrete_args=concrete or None)
    except WslError:
        raise
    except Exception as e:
        raise TraceError(f"torch.fx could not trace {type(module).__name__}: {_first_line(e)}. Data-dependent "
                         "Python control flow in forward() cannot be traced; move it into a leaf layer.") from e


def _new_builder(module: nn.Module) -> tuple[SpecBuilder, dict[str, torch.Tensor]]:
    state = module.state_dict(keep_vars=True)
    b = SpecBuilder()
    b.param_shapes = {k: tuple(v.shape) for k, v in state.items()}
    b.buffer_names = {k for k, _ in module.named_buffers()}
    return b, dict(state)


def _fx_spec(module: nn.Module, graph: torch.fx.Graph, inputs: tuple) -> WeightSpaceSpec:
    gm = torch.fx.GraphModule(module, graph)
    b, state = _new_builder(module)
    interp = _Interpreter(gm, b, state)
    interp.root_type = type(module).__name__
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            interp.run(*inputs)
    finally:
        module.train(was_training)
    return _finish(b, module, state, inputs, interp.outputs, "fx")


def _export_spec(module: nn.Module, inputs: tuple | dict) -> WeightSpaceSpec:
    from wsl.space.export_trace import export_run

    b, state = _new_builder(module)
    outputs = export_run(module, inputs, b, state)
    return _finish(b, module, state, inputs, outputs, "export")


def _output_groups(b: SpecBuilder, v: Val) -> list[int]:
    """Every group whose units an output tensor carries (heads and their parts included)."""
    from wsl.space.segments import leaves
    from wsl.space.unit_layout import StaleUnits, layout_of, unit_groups

    groups = [b.site_group(v.site)] if v.site is not None else []
    try:
        groups += [g for dim in layout_of(b, v) for g in unit_groups(dim)]
    except StaleUnits:
        groups += [leaf for dim in v.split or ((v.fdim, v.factors),) for f in dim[1] if f[0] is not None
                   for _, _, leaf in leaves(b, f[0])]
    return groups


def _finish(b: SpecBuilder, module: nn.Module, state: dict[str, torch.Tensor], inputs: tuple | dict,
            outputs: list[Any], frontend: str) -> WeightSpaceSpec:
    for v in _flatten_vals(outputs):
        for grp in (_output_groups(b, v) if v.site is not None else []):
            g = b.find(grp)
            b.groups[g].fixed = True
            if b.groups[g].kind in ("hidden", "channel"):
                b.groups[g].kind = "output"
    order, aliases, unread = _resolve_entries(b, module, state)
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


def _flatten_vals(x: Any) -> list[Val]:
    if isinstance(x, Val):
        return [x]
    if isinstance(x, dict):
        return [v for item in x.values() for v in _flatten_vals(item)]
    if isinstance(x, (list, tuple)):
        return [v for item in x for v in _flatten_vals(item)]
    return []


def _resolve_entries(b: SpecBuilder, module: nn.Module, state: dict[str, torch.Tensor]
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

"""Derive a weight-space spec from an ``nn.Module`` with torch.fx.

The module is symbolically traced, with every layer that owns parameters kept
as a leaf, then executed once on an example input. While it runs, each node's
output is annotated with a :class:`~wsl.space.builder.Val` (which dim carries
which units) by the layer handlers (:mod:`wsl.space.handlers`) and the
functional-op rules (:mod:`wsl.space.ops`). The network's inputs and outputs
become fixed groups; every state_dict entry must be claimed by some rule, or
the trace fails loudly.
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
from wsl.space.spec import WeightSpaceSpec
from wsl.space.verify import check_layer, needs_check


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return handlers.is_leaf(m)


def guess_example_input(module: nn.Module, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """An example input: from ``module.wsl_input_shape`` or from its first layer.

    The input lives on the module's device, in its floating dtype, and is drawn
    from a private generator (the global RNG is left alone).
    """
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
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


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


class _Interpreter(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, builder: SpecBuilder, state: dict[str, torch.Tensor]):
        super().__init__(gm)
        self.extra_traceback = False  # fx would append "While executing ..." lines to our one-line errors
        self.b = builder
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
            return ops.handle(self.b, _path(n), n.target, args, kwargs, vargs, vkwargs, out)
        if n.op == "output":
            self.outputs.append(vargs[0] if vargs else None)
            return None
        raise TraceError(f"unexpected fx node {n.op} at '{_path(n)}'")


def trace_spec(module: nn.Module, example_input: Any = None) -> WeightSpaceSpec:
    """Trace ``module`` and return its :class:`WeightSpaceSpec`."""
    if not isinstance(module, nn.Module):
        raise TraceError(f"expected an nn.Module, got {type(module).__name__}")
    inputs = example_input if example_input is not None else guess_example_input(module)
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    concrete = _concrete_args(module, len(inputs))
    try:
        graph = _Tracer().trace(module, concrete_args=concrete or None)
    except WslError:
        raise
    except Exception as e:
        raise TraceError(f"torch.fx could not trace {type(module).__name__}: {_first_line(e)}. Data-dependent "
                         "Python control flow in forward() cannot be traced; move it into a leaf layer.") from e
    gm = torch.fx.GraphModule(module, graph)
    state = module.state_dict(keep_vars=True)
    b = SpecBuilder()
    b.param_shapes = {k: tuple(v.shape) for k, v in state.items()}
    b.buffer_names = {k for k, _ in module.named_buffers()}
    interp = _Interpreter(gm, b, dict(state))
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            interp.run(*inputs)
    finally:
        module.train(was_training)
    for v in _flatten_vals(interp.outputs):
        for site in v.unit_sites:  # several for an output concatenated along its units
            g = b.find(b.site_group(site))
            b.groups[g].fixed = True
            if b.groups[g].kind in ("hidden", "channel"):
                b.groups[g].kind = "output"
    order, aliases, unread = _resolve_entries(b, module, state)
    meta = {"input_shapes": tuple(tuple(t.shape[1:]) for t in inputs if isinstance(t, torch.Tensor)),
            "input_dtypes": tuple(str(t.dtype).replace("torch.", "") for t in inputs if isinstance(t, torch.Tensor)),
            "unread": tuple(unread), "tied": tuple(b.tied), "module": type(module).__name__,
            "activations": tuple(sorted(b.activations))}
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
            if id(t) in seen:  # tied weights claimed by two layers (e.g. lm_head and wte)
                b.tied.append((name, seen[id(t)]))
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
    b.extras = list(dict.fromkeys(b.extras))
    return order, aliases, unread

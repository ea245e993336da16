"""Meta-models by name (the predictors they become live in :mod:`wsl.train.predictor`).

Model registry
    :data:`MODELS` maps a name to a :class:`ModelEntry`: the model's input
    kind (``"features"``, ``"graph"``, ``"stats"`` or ``"render"``, see
    :mod:`wsl.tasks.generalization` and :mod:`wsl.tasks.inr_data`) and a
    factory ``factory(info, **params)`` where ``info`` is an
    :class:`InputInfo` (the WeightSpace for dense models, the feature count
    for stats models, ...). Built in: ``np``, ``hnp``, ``nft``
    (:mod:`wsl.nn.dense_models`), ``nggnn``, ``ngt``
    (:mod:`wsl.nn.graph_models`), ``flat_mlp``, ``render_cnn``, imported on
    first use. A config may also name ``package.module:factory`` or
    ``path/to/file.py:factory``; the factory must carry an ``input_kind`` attribute.

Outputs
    ``info.output == "invariant"`` (default): one vector of ``info.out_features``
    values per network (1 for generalization, the number of classes for INR
    classification). ``info.output == "update"``: a weight update of the same
    space (INR editing); a built-in entry then uses its ``editor`` form (NP/HNP/NFT ->
    :mod:`wsl.nn.dense_edit`, NG-GNN/NG-T with the equivariant head, ``flat_mlp`` ->
    :class:`~wsl.nn.dense_edit.FlatMLPEdit`).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from wsl.errors import ConfigError

__all__ = ["MODELS", "InputInfo", "ModelEntry", "build_model", "register_model", "resolve_model"]


@dataclass
class InputInfo:
    """What a factory needs to know about the data: kind, architecture, feature sizes."""

    kind: str
    space: Any = None  #: WeightSpace of the (single) training architecture, features/stats kinds
    num_features: int | None = None  #: stats kind
    stats_layout: str | None = None
    edge_dim: int | None = None  #: graph kind: widest edge_attr seen in training
    #: probe fusion (:class:`~wsl.nn.probed.ProbeFusion`): {"num", "seed", "embed", "hidden", "num_features"}
    probes: dict[str, Any] | None = None
    output: str = "invariant"  #: "invariant" (out_features per network) or "update" (a weight update, same space)
    out_features: int = 1  #: outputs per network of an invariant model (classes for classification)
    render_shape: list[int] | None = None  #: render kind: the grid of the renders


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its input kind, factory and the class whose arguments it takes."""

    name: str
    input_kind: str
    factory: Callable[..., nn.Module]
    target: Callable[[], Any] | None = None  #: returns the class/function whose signature lists the params
    description: str = ""
    #: the weight-update form (factory, target) used when ``info.output == "update"``; None = none
    editor: tuple[Callable[..., nn.Module], Callable[[], Any]] | None = None


MODELS: dict[str, ModelEntry] = {}


INPUT_KINDS = ("features", "graph", "stats", "render")


def register_model(name: str, input_kind: str, factory: Callable[..., nn.Module],
                   target: Callable[[], Any] | None = None, description: str = "",
                   editor: tuple[Callable[..., nn.Module], Callable[[], Any]] | None = None) -> ModelEntry:
    """Register (or replace) a model name."""
    if input_kind not in INPUT_KINDS:
        raise ConfigError(f"register_model({name!r}): input_kind must be one of {', '.join(INPUT_KINDS)}, "
                          f"got {input_kind!r}")
    entry = ModelEntry(name, input_kind, factory, target, description, editor)
    MODELS[name] = entry
    return entry


def _lazy(module: str, cls_name: str) -> tuple[Callable[..., nn.Module], Callable[[], Any]]:
    """Factory and signature target of a built-in model class, imported on first use."""

    def target() -> Any:
        return getattr(importlib.import_module(module), cls_name)

    def factory(info: InputInfo, **params: Any) -> nn.Module:
        if info.output == "invariant" and info.out_features != 1:  # e.g. one logit per class
            key = "out_features" if info.kind == "features" else "out_dim"
            if params.get(key, info.out_features) != info.out_features:
                raise ConfigError(f"model.{key} is {params[key]}, but the task needs {info.out_features} outputs")
            params[key] = info.out_features
        if info.kind == "features":
            return target()(info.space, **params)  # type: ignore[no-any-return]
        if info.edge_dim is not None and "max_edge_width" not in params and int(info.edge_dim) > 64:
            params["max_edge_width"] = int(info.edge_dim)  # the graph models' default is 64
        if info.output == "update":
            params.setdefault("edge_out_width", int(info.edge_dim or 64))
            model = target()(**{**params, "task": "equivariant"})
            with torch.no_grad():  # the update starts at zero (the identity edit), as the dense editing nets do
                for mlp in (model.head.node_mlp, model.head.edge_mlp):
                    mlp[-1].weight.zero_()
                    mlp[-1].bias.zero_()
            return model  # type: ignore[no-any-return]
        return target()(**params)  # type: ignore[no-any-return]

    return factory, target


for _n, _c, _d in (("np", "NPNet", "NP equivariant network (DWSNets/NFN-NP) + invariant pooling"),
                   ("hnp", "HNPNet", "HNP equivariant network (hidden-neuron permutations only)"),
                   ("nft", "NFTNet", "neural functional transformer")):
    register_model(_n, "features", *_lazy("wsl.nn.dense_models", _c), description=_d,
                   editor=_lazy("wsl.nn.dense_edit", _c.replace("Net", "EditNet")))
register_model("flat_mlp", "features", *_lazy("wsl.nn.flat", "FlatMLPNet"),
               description="MLP on flattened weights (not permutation-invariant: a baseline)",
               editor=_lazy("wsl.nn.dense_edit", "FlatMLPEdit"))
for _n, _c, _d in (("nggnn", "NGGNN", "neural-graph GNN (PNA + edge updates)"),
                   ("ngt", "NGT", "neural-graph relational transformer")):
    _f, _t = _lazy("wsl.nn.graph_models", _c)
    register_model(_n, "graph", _f, _t, description=_d, editor=(_f, _t))


def _render_target() -> Any:
    return importlib.import_module("wsl.nn.render_cnn").RenderCNN


def _render_factory(info: InputInfo, **params: Any) -> nn.Module:
    if info.render_shape is None:
        raise ConfigError("model 'render_cnn' reads renders of INRs: use it with task inr_classification")
    if params.get("out_features", info.out_features) != info.out_features:
        raise ConfigError(f"model.out_features is {params['out_features']}, but the task needs {info.out_features}")
    return _render_target()(info.render_shape, **{**params, "out_features": info.out_features})  # type: ignore[no-any-return]


register_model("render_cnn", "render", _render_factory, _render_target,
               description="small CNN on the rendered INR (render, then classify: the probing reference)")


def resolve_model(name: str, output: str = "invariant") -> ModelEntry:
    """The registry entry for ``name``, or one made from ``module:attr`` / ``file.py:attr``.

    ``output="update"`` gives the entry's weight-update (editing) form, or a
    ConfigError naming the models that have one.
    """
    if output == "update":
        entry = resolve_model(name)
        if entry.editor is not None:
            return ModelEntry(entry.name, entry.input_kind, entry.editor[0], entry.editor[1], entry.description)
        if getattr(entry.factory, "output", None) == "update":  # a user factory that declares update outputs
            return entry
        able = sorted(n for n, e in MODELS.items() if e.editor is not None)
        raise ConfigError(f"model {name!r} has no weight-update (equivariant editing) form; models with one: "
                          f"{', '.join(able)} (a user factory declares one with factory.output = 'update')")
    if name in MODELS:
        return MODELS[name]
    if ":" not in name:
        import difflib

        close = difflib.get_close_matches(name, list(MODELS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"model.name {name!r} is not a registered model ({', '.join(sorted(MODELS))}) nor a "
                          f"'module:factory' reference{hint}")
    mod_name, _, attr = name.rpartition(":")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name)
            if not path.is_file():
                raise ConfigError(f"model.name {name!r}: file {path} does not exist")
            spec = importlib.util.spec_from_file_location(f"wsl_user_model_{abs(hash(str(path.resolve())))}", path)
            if spec is None or spec.loader is None:
                raise ConfigError(f"model.name {name!r}: cannot import {path}")
            module = importlib.util.module_from_spec(spec)
            import sys

            sys.path.insert(0, str(path.resolve().parent))  # sibling imports of the file
            try:
                spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.resolve().parent))
        else:
            module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"model.name {name!r}: cannot import {mod_name}: {exc}") from exc
    fn = getattr(module, attr, None)
    if isinstance(fn, ModelEntry):
        return fn
    kind = getattr(fn, "input_kind", None)
    if not callable(fn) or kind not in INPUT_KINDS:
        raise ConfigError(f"model.name {name!r}: {attr} must be a callable factory(info, **params) with an "
                          f"input_kind attribute (one of {', '.join(INPUT_KINDS)})")
    return ModelEntry(name, kind, fn, lambda: fn)


def check_params(entry: ModelEntry, params: Mapping[str, Any]) -> None:
    """Raise ConfigError naming ``model.<key>`` for arguments the model does not take."""
    if entry.target is None:
        return
    try:
        target = entry.target()
    except ImportError as exc:
        raise ConfigError(f"model {entry.name!r} is not available in this build: {exc}") from exc
    try:
        ps = dict(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return
    for base in (target.__mro__[1:] if isinstance(target, type) else ()):  # **kwargs forwarded to base classes
        if not any(p.kind is p.VAR_KEYWORD for p in ps.values()) or base in (nn.Module, object):
            break
        ps = {k: v for k, v in ps.items() if v.kind is not v.VAR_KEYWORD}
        ps.update({k: v for k, v in inspect.signature(base.__init__).parameters.items() if k not in ps})
    if any(p.kind is p.VAR_KEYWORD for p in ps.values()):
        return
    valid = [n for n, p in ps.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
             and n not in ("self", "space", "spaces", "info", "layers")]
    for key in params:
        if key not in valid:
            import difflib

            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"did you mean 'model.{close[0]}'?" if close else f"valid: {', '.join(valid)}"
            raise ConfigError(f"unknown key 'model.{key}' for model {entry.name!r}; {hint}")


def build_model(name: str, info: InputInfo, params: Mapping[str, Any]) -> nn.Module:
    """Construct model ``name`` for inputs ``info`` (params checked against its signature)."""
    entry = resolve_model(name, info.output)
    if entry.input_kind != info.kind:
        raise ConfigError(f"model {name!r} consumes {entry.input_kind!r} inputs, got {info.kind!r}")
    check_params(entry, params)
    try:
        if info.probes:
            from wsl.nn.probed import ProbeFusion

            pr = info.probes
            inner = entry.factory(info, **{**dict(params), ("out_features" if info.kind == "features" else "out_dim"):
                                           int(pr["embed"])})
            init, invert = None, int(pr.get("invert", 0))
            stored = [int(pr["num"]) + invert, *pr["input_shape"]] if invert else None  # not redrawable: kept
            if pr.get("learn"):
                from wsl.tasks.probes import probe_inputs

                init = torch.zeros(stored) if stored else probe_inputs(pr["input_shape"], int(pr["num"]),
                                                                       int(pr["seed"]), pr.get("kind", "uniform"))
            return ProbeFusion(inner, int(pr["num_features"]), int(pr["embed"]), int(pr["hidden"]), learn_inputs=init,
                               stored_inputs=stored)
        return entry.factory(info, **dict(params))
    except ImportError as exc:
        raise ConfigError(f"model {name!r} is not available in this build: {exc}") from exc
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: bad arguments {dict(params)}: {exc}") from exc

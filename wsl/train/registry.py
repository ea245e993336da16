"""Meta-models by name (the predictors they become live in :mod:`wsl.train.predictor`).

Model registry
    :data:`MODELS` maps a name to a :class:`ModelEntry`: the model's input
    kind (``"features"``, ``"graph"`` or ``"stats"``, see
    :mod:`wsl.tasks.generalization`) and a factory ``factory(info, **params)``
    where ``info`` is an :class:`InputInfo` (the WeightSpace for dense
    models, the feature count for stats models, ...). Built in: ``np``,
    ``hnp``, ``nft`` (:mod:`wsl.nn.dense_models`), ``nggnn``, ``ngt``
    (:mod:`wsl.nn.graph_models`), imported on first use. A config may also
    name ``package.module:factory`` or ``path/to/file.py:factory``; the factory
    must carry an ``input_kind`` attribute.
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


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its input kind, factory and the class whose arguments it takes."""

    name: str
    input_kind: str
    factory: Callable[..., nn.Module]
    target: Callable[[], Any] | None = None  #: returns the class/function whose signature lists the params
    description: str = ""


MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, input_kind: str, factory: Callable[..., nn.Module],
                   target: Callable[[], Any] | None = None, description: str = "") -> ModelEntry:
    """Register (or replace) a model name."""
    if input_kind not in ("features", "graph", "stats"):
        raise ConfigError(f"register_model({name!r}): input_kind must be features, graph or stats, got {input_kind!r}")
    entry = ModelEntry(name, input_kind, factory, target, description)
    MODELS[name] = entry
    return entry


def _lazy(module: str, cls_name: str) -> tuple[Callable[..., nn.Module], Callable[[], Any]]:
    """Factory and signature target of a built-in model class, imported on first use."""

    def target() -> Any:
        return getattr(importlib.import_module(module), cls_name)

    def factory(info: InputInfo, **params: Any) -> nn.Module:
        if info.kind == "features":
            return target()(info.space, **params)  # type: ignore[no-any-return]
        if info.edge_dim is not None and "max_edge_width" not in params and int(info.edge_dim) > 64:
            params["max_edge_width"] = int(info.edge_dim)  # the graph models' default is 64
        return target()(**params)  # type: ignore[no-any-return]

    return factory, target


for _n, _c, _d in (("np", "NPNet", "NP equivariant network (DWSNets/NFN-NP) + invariant pooling"),
                   ("hnp", "HNPNet", "HNP equivariant network (hidden-neuron permutations only)"),
                   ("nft", "NFTNet", "neural functional transformer")):
    register_model(_n, "features", *_lazy("wsl.nn.dense_models", _c), description=_d)
register_model("flat_mlp", "features", *_lazy("wsl.nn.flat", "FlatMLPNet"),
               description="MLP on flattened weights (not permutation-invariant: a baseline)")
for _n, _c, _d in (("nggnn", "NGGNN", "neural-graph GNN (PNA + edge updates)"),
                   ("ngt", "NGT", "neural-graph relational transformer")):
    register_model(_n, "graph", *_lazy("wsl.nn.graph_models", _c), description=_d)


def resolve_model(name: str) -> ModelEntry:
    """The registry entry for ``name``, or one made from ``module:attr`` / ``file.py:attr``."""
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
    if not callable(fn) or kind not in ("features", "graph", "stats"):
        raise ConfigError(f"model.name {name!r}: {attr} must be a callable factory(info, **params) with an "
                          "input_kind attribute ('features', 'graph' or 'stats')")
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
    entry = resolve_model(name)
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

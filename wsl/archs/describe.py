"""JSON architecture descriptions (format ``"wsl.arch/1"``).

A description rebuilds a module without importing user code. Two kinds::

    {"format": "wsl.arch/1", "kind": "sequential", "input_shape": [1, 8, 8],
     "layers": [{"type": "conv2d", "out_channels": 16, "kernel_size": 3}, ...]}
    {"format": "wsl.arch/1", "kind": "builtin", "name": "resnet18", "kwargs": {}}

Sequential layers and their fields are listed in :data:`SCHEMA`; input
channels/features are inferred by propagating ``input_shape`` (no batch
dimension) through the layers. Builtin names are the keys of
:data:`wsl.archs.registry.REGISTRY`; nothing else can be imported.

:func:`validate` returns the *canonical* form (defaults of ``linear``/``conv``/
``dropout``/``pool`` fields written out, other defaults dropped, square sizes
as one int), which :func:`build` stores on the module as ``wsl_arch`` and
:func:`describe` returns.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from wsl.archs.registry import REGISTRY, layer_specs
from wsl.archs.simple import FORMAT, GlobalAvgPool, Residual, tag, to_json
from wsl.errors import ArchitectureError

REQUIRED = object()
"""Marker for fields without a default."""

class Sine(nn.Module):
    """``sin(w0 * x)``, the SIREN activation (elementwise; traced through by ``wsl.space``)."""

    def __init__(self, w0: float = 30.0) -> None:
        super().__init__()
        self.w0 = float(w0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply ``sin(w0 * x)``."""
        return torch.sin(self.w0 * x)

    def extra_repr(self) -> str:
        return f"w0={self.w0}"


Field = tuple[str, str, Any, bool]  # (name, kind, default, always written in canonical form)
_CONV: list[Field] = [
    ("out_channels", "pos_int", REQUIRED, True), ("kernel_size", "size", REQUIRED, True),
    ("stride", "size", 1, True), ("padding", "padding", 0, True), ("dilation", "size", 1, True),
    ("groups", "pos_int", 1, True), ("bias", "bool", True, True),
]
_BN: list[Field] = [
    ("eps", "pos_float", 1e-5, False), ("momentum", "prob", 0.1, False),
    ("affine", "bool", True, False), ("track_running_stats", "bool", True, False),
]
_POOL: list[Field] = [
    ("kernel_size", "size", REQUIRED, True), ("stride", "size_or_null", None, True),
    ("padding", "size0", 0, False),
]
SCHEMA: dict[str, list[Field]] = {
    "linear": [("out_features", "pos_int", REQUIRED, True), ("bias", "bool", True, True)],
    "conv1d": _CONV, "conv2d": _CONV, "batchnorm1d": _BN, "batchnorm2d": _BN,
    "groupnorm": [("num_groups", "pos_int", REQUIRED, True), ("eps", "pos_float", 1e-5, False),
                  ("affine", "bool", True, False)],
    "layernorm": [("eps", "pos_float", 1e-5, False), ("affine", "bool", True, False)],
    "relu": [], "tanh": [], "sigmoid": [], "silu": [], "identity": [],
    "gelu": [("approximate", "gelu_approx", "none", False)],
    "leaky_relu": [("negative_slope", "float", 0.01, False)],
    "sine": [("w0", "pos_float", 30.0, True)],
    "dropout": [("p", "prob", 0.5, True)],
    "maxpool2d": _POOL, "avgpool2d": _POOL, "global_avg_pool": [], "flatten": [],
    "residual": [("body", "layers", REQUIRED, True), ("shortcut", "layers_or_null", None, True)],
    "embedding": [("num_embeddings", "pos_int", REQUIRED, True), ("embedding_dim", "pos_int", REQUIRED, True),
                  ("padding_idx", "int_or_null", None, False)],
    "pad2d": [("padding", "pad4", REQUIRED, True)],
}
"""Layer type -> fields ``(name, kind, default, always_written)``."""

_ACTS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    "relu": lambda s: nn.ReLU(), "tanh": lambda s: nn.Tanh(), "sigmoid": lambda s: nn.Sigmoid(),
    "silu": lambda s: nn.SiLU(), "identity": lambda s: nn.Identity(),
    "gelu": lambda s: nn.GELU(approximate=s.get("approximate", "none")),
    "leaky_relu": lambda s: nn.LeakyReLU(s.get("negative_slope", 0.01)),
    "sine": lambda s: Sine(s.get("w0", 30.0)),
}
Shape = tuple[int, ...]


class Pad2d(nn.Module):
    """Zero padding ``[left, right, top, bottom]`` of (B, C, H, W) maps, possibly asymmetric
    (e.g. TensorFlow 'same' padding with stride 2). Calls ``F.pad`` so it is fx-traceable."""

    def __init__(self, padding: list[int]) -> None:
        super().__init__()
        self.padding = tuple(int(p) for p in padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad the last two dimensions with zeros."""
        return nn.functional.pad(x, self.padding)


def _fail(path: str, msg: str) -> ArchitectureError:
    return ArchitectureError(f"architecture description: {path}: {msg}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _size(v: Any, path: str, lo: int, n: int) -> int | list[int]:
    """An int >= lo or a list of ``n`` such ints; square lists collapse to one int."""
    if _is_int(v) and v >= lo:
        return int(v)
    if isinstance(v, (list, tuple)) and len(v) == n and all(_is_int(x) and x >= lo for x in v):
        return int(v[0]) if len(set(v)) == 1 else [int(x) for x in v]
    raise _fail(path, f"expected an int >= {lo} or a list of {n} such ints, got {v!r}")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "pos_int": (lambda v: _is_int(v) and v >= 1, "a positive int"),
    "int_or_null": (lambda v: v is None or _is_int(v), "an int or null"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "float": (_is_num, "a number"),
    "pos_float": (lambda v: _is_num(v) and v > 0, "a positive number"),
    "prob": (lambda v: _is_num(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "gelu_approx": (lambda v: v in ("none", "tanh"), "'none' or 'tanh'"),
    "layers": (lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list of layers"),
    "layers_or_null": (lambda v: v is None or (isinstance(v, list) and len(v) > 0),
                       "a non-empty list of layers or null"),
    "pad4": (lambda v: isinstance(v, list) and len(v) == 4 and all(_is_int(x) and x >= 0 for x in v),
             "a list [left, right, top, bottom] of 4 ints >= 0"),
}


def _value(v: Any, kind: str, path: str, n: int) -> Any:
    """Check one field value of the given kind and return its canonical form."""
    if kind in _CHECKS:
        ok, what = _CHECKS[kind]
        if not ok(v):
            raise _fail(path, f"expected {what}, got {v!r}")
        return float(v) if kind in ("float", "pos_float", "prob") else v
    if v is None and kind == "size_or_null":
        return None
    if kind == "padding" and v in ("same", "valid"):
        return v
    return _size(v, path, 0 if kind in ("size0", "padding") else 1, n)


def _pair(v: int | list[int], n: int) -> list[int]:
    return [v] * n if isinstance(v, int) else list(v)


def _canonical_layer(spec: Any, path: str) -> dict[str, Any]:
    """Check keys and value types of one layer; return its canonical dict."""
    if not isinstance(spec, dict):
        raise _fail(path, f"a layer must be an object, got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in SCHEMA:
        raise _fail(f"{path}.type", f"unknown layer type {kind!r}; valid types: {', '.join(SCHEMA)}")
    fields = SCHEMA[kind]
    names = {f[0] for f in fields}
    for key in spec:
        if key != "type" and key not in names:
            raise _fail(f"{path}.{key}", f"unknown field for layer type '{kind}'; valid: {sorted(names)}")
    n = 1 if kind.endswith("1d") else 2
    out: dict[str, Any] = {"type": kind}
    for name, fkind, default, always in fields:
        if name not in spec:
            if default is REQUIRED:
                raise _fail(f"{path}.{name}", f"missing required field of layer type '{kind}'")
            value = default
        else:
            value = _value(spec[name], fkind, f"{path}.{name}", n)
        if name == "stride" and value is None:
            value = out["kernel_size"]
        if always or value != default:
            out[name] = value
    return out


def _conv_out(size: int, k: int, s: int, p: int, d: int) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _layer(spec: dict[str, Any], shape: Shape, path: str, first: bool) -> tuple[Shape, Callable[[], nn.Module]]:
    """Output shape of a canonical layer on ``shape`` and a constructor for it."""
    t = spec["type"]
    here = f"{path} ({t})"

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise _fail(here, f"{what}, got input shape {list(shape)}")

    if t == "embedding":
        need(first, "an embedding must be the first layer of the top-level list")
        return shape + (spec["embedding_dim"],), lambda: nn.Embedding(
            spec["num_embeddings"], spec["embedding_dim"], padding_idx=spec.get("padding_idx"))
    if t == "linear":
        need(len(shape) >= 1, "expects at least one feature dimension")
        return shape[:-1] + (spec["out_features"],), lambda: nn.Linear(shape[-1], spec["out_features"], spec["bias"])
    if t in ("conv1d", "conv2d"):
        n = 1 if t == "conv1d" else 2
        need(len(shape) == n + 1, f"expects input (C, {'L' if n == 1 else 'H, W'})")
        groups, c_out = spec["groups"], spec["out_channels"]
        need(shape[0] % groups == 0 and c_out % groups == 0, f"groups={groups} must divide in and out channels")
        ks, st, dl = (_pair(spec[k], n) for k in ("kernel_size", "stride", "dilation"))
        pad = spec["padding"]
        need(pad != "same" or st == [1] * n, "padding 'same' requires stride 1")
        pads = [0] * n if pad == "valid" else _pair(pad, n) if pad != "same" else None
        spatial = shape[1:] if pads is None else tuple(
            _conv_out(shape[1 + i], ks[i], st[i], pads[i], dl[i]) for i in range(n))
        need(min(spatial) >= 1, f"output would be empty ({list(spatial)})")
        cls = nn.Conv1d if n == 1 else nn.Conv2d
        return (c_out, *spatial), lambda: cls(shape[0], c_out, spec["kernel_size"], spec["stride"], pad,
                                              spec["dilation"], groups, spec["bias"])
    if t in ("batchnorm1d", "batchnorm2d"):
        need(len(shape) in ((1, 2) if t == "batchnorm1d" else (3,)), "wrong input rank for batch norm")
        cls_bn = nn.BatchNorm1d if t == "batchnorm1d" else nn.BatchNorm2d
        return shape, lambda: cls_bn(shape[0], spec.get("eps", 1e-5), spec.get("momentum", 0.1),
                                     spec.get("affine", True), spec.get("track_running_stats", True))
    if t == "groupnorm":
        g = spec["num_groups"]
        need(len(shape) >= 1 and shape[0] % g == 0, f"num_groups={g} must divide the channel count")
        return shape, lambda: nn.GroupNorm(g, shape[0], spec.get("eps", 1e-5), spec.get("affine", True))
    if t == "layernorm":
        need(len(shape) >= 1, "expects at least one feature dimension")
        return shape, lambda: nn.LayerNorm(shape[-1], spec.get("eps", 1e-5), spec.get("affine", True))
    if t in _ACTS:
        return shape, lambda: _ACTS[t](spec)
    if t == "dropout":
        return shape, lambda: nn.Dropout(spec["p"])
    if t == "pad2d":
        need(len(shape) == 3, "expects input (C, H, W)")
        left, right, top, bottom = spec["padding"]
        return (shape[0], shape[1] + top + bottom, shape[2] + left + right), lambda: Pad2d(spec["padding"])
    if t in ("maxpool2d", "avgpool2d"):
        need(len(shape) == 3, "expects input (C, H, W)")
        ks, st, pd = (_pair(spec.get(k, 0), 2) for k in ("kernel_size", "stride", "padding"))
        need(all(2 * p <= k for p, k in zip(pd, ks)), "padding must be at most half the kernel size")
        spatial = tuple(_conv_out(shape[1 + i], ks[i], st[i], pd[i], 1) for i in range(2))
        need(min(spatial) >= 1, f"output would be empty ({list(spatial)})")
        pool = nn.MaxPool2d if t == "maxpool2d" else nn.AvgPool2d
        return (shape[0], *spatial), lambda: pool(spec["kernel_size"], spec["stride"], spec.get("padding", 0))
    if t == "global_avg_pool":
        need(len(shape) >= 2, "expects input (C, *spatial)")
        return shape[:1], GlobalAvgPool
    if t == "flatten":
        size = 1
        for s in shape:
            size *= s
        return (size,), nn.Flatten
    # residual
    body_shape, body = _walk(spec["body"], shape, f"{path}.body", nested=True)
    short_shape, short = shape, None
    if spec["shortcut"] is not None:
        short_shape, short = _walk(spec["shortcut"], shape, f"{path}.shortcut", nested=True)
    need(body_shape == short_shape,
         f"body output {list(body_shape)} != shortcut output {list(short_shape)}")
    return body_shape, lambda: Residual(body(), None if short is None else short())


def _walk(layers: list[Any], shape: Shape, path: str, nested: bool = False) -> tuple[Shape, Callable[[], nn.Sequential]]:
    """Canonicalise ``layers`` in place, propagate ``shape``, return a Sequential constructor."""
    makers = []
    for i, spec in enumerate(layers):
        where = f"{path}[{i}]"
        layers[i] = _canonical_layer(spec, where)
        shape, make = _layer(layers[i], shape, where, first=(i == 0 and not nested))
        makers.append(make)
    return shape, lambda: nn.Sequential(*(m() for m in makers))


def _check_top(desc: Any) -> dict[str, Any]:
    if not isinstance(desc, dict):
        raise _fail("<root>", f"expected an object, got {type(desc).__name__}")
    if desc.get("format") != FORMAT:
        raise _fail("format", f"expected {FORMAT!r}, got {desc.get('format')!r}")
    kind = desc.get("kind")
    allowed = {"sequential": ("input_shape", "layers"), "builtin": ("name", "kwargs")}
    if kind not in allowed:
        raise _fail("kind", f"expected 'sequential' or 'builtin', got {kind!r}")
    for key in desc:
        if key not in ("format", "kind", *allowed[kind]):
            raise _fail(key, f"unknown field for kind '{kind}'; valid: {['format', 'kind', *allowed[kind]]}")
    return {"format": FORMAT, "kind": kind}


def _analyse(desc: Any) -> tuple[dict[str, Any], Shape, Callable[[], nn.Module] | None]:
    """Canonical description, input shape and (for sequential) a constructor."""
    out = _check_top(desc)
    if out["kind"] == "builtin":
        name = desc.get("name")
        if name not in REGISTRY:
            raise _fail("name", f"unknown builtin architecture {name!r}; valid: {', '.join(sorted(REGISTRY))}")
        kwargs = desc.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise _fail("kwargs", f"expected an object, got {type(kwargs).__name__}")
        out.update(name=name, kwargs=to_json(copy.deepcopy(kwargs), "kwargs"))
        return out, (), None
    shape = desc.get("input_shape")
    if not isinstance(shape, list) or not shape or not all(_is_int(s) and s >= 1 for s in shape):
        raise _fail("input_shape", f"expected a non-empty list of positive ints, got {shape!r}")
    layers = desc.get("layers")
    if not isinstance(layers, list) or not layers:
        raise _fail("layers", f"expected a non-empty list of layers, got {layers!r}")
    layers = copy.deepcopy(layers)
    _, make = _walk(layers, tuple(shape), "layers")
    out.update(input_shape=list(shape), layers=layers)
    return out, tuple(shape), make


def validate(desc: dict[str, Any]) -> dict[str, Any]:
    """Check ``desc`` and return its canonical form; raise ArchitectureError naming the JSON path.

    Sequential descriptions are checked completely (fields, types, shapes);
    for builtin ones only the name and JSON-ness of ``kwargs`` -- the factory
    checks its arguments when :func:`build` calls it.
    """
    return _analyse(desc)[0]


def build(desc: dict[str, Any]) -> nn.Module:
    """Build the module a description specifies (sets ``wsl_arch`` and input attributes)."""
    canonical, shape, make = _analyse(desc)
    if make is None:
        try:
            module = REGISTRY[canonical["name"]](**canonical["kwargs"])
        except ArchitectureError as err:
            raise _fail("kwargs", str(err)) from None
        except (TypeError, ValueError, KeyError) as err:
            raise _fail("kwargs", f"builtin '{canonical['name']}' rejected its arguments: {err}") from None
        if not isinstance(getattr(module, "wsl_arch", None), dict):
            module.wsl_arch = canonical
        return module
    module = make()
    dtype = "int64" if canonical["layers"][0]["type"] == "embedding" else "float32"
    tag(module, shape, dtype)
    module.wsl_arch = canonical
    return module


def _guess_shape(seq: nn.Sequential) -> list[int]:
    first = seq[0] if len(seq) else None
    if type(first) is nn.Linear:
        return [first.in_features]
    if type(first) is nn.Embedding:
        return [16]
    raise ArchitectureError(
        f"describe: cannot infer the input shape of a Sequential starting with {type(first).__name__}; "
        "pass input_shape=(C, H, W) or set the module's wsl_input_shape attribute"
    )


def describe(module: nn.Module, *, expand: bool = False, input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """JSON description of ``module``.

    Returns the stored ``wsl_arch`` of modules built by :func:`build` or the
    ``wsl.archs`` factories. With ``expand=True`` (or without ``wsl_arch``), a
    plain ``nn.Sequential`` of supported layers is described layer by layer;
    ``input_shape`` (no batch) defaults to ``wsl_input_shape`` or is guessed
    from a first Linear/Embedding. The result is checked by rebuilding it on
    the meta device and comparing ``state_dict`` shapes.
    """
    stored = getattr(module, "wsl_arch", None)
    if isinstance(stored, dict) and not (expand and type(module) is nn.Sequential):
        return copy.deepcopy(stored)
    if type(module) is not nn.Sequential:
        raise ArchitectureError(
            f"describe: cannot describe {type(module).__name__}: only modules built by wsl.archs "
            "(with a wsl_arch attribute) or nn.Sequential of supported layers are describable"
        )
    shape = input_shape or getattr(module, "wsl_input_shape", None) or _guess_shape(module)
    desc = validate({"format": FORMAT, "kind": "sequential", "input_shape": [int(s) for s in shape],
                     "layers": layer_specs(module, "layers")})
    with torch.device("meta"):
        rebuilt = build(desc)
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:4]
        raise ArchitectureError(
            f"describe: the description does not reproduce the module's state_dict for input shape "
            f"{list(shape)} (differences: {diff}); pass the right input_shape"
        )
    return desc

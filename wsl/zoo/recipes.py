"""Zoo recipes: YAML files describing how to generate a zoo, parsed into checked dataclasses.

A recipe names a data set, an architecture family, a hyperparameter space
and a training schedule (see ``zoos/*.yaml``)::

    name: digits-cnn-gs
    task: classification            # or "siren"
    dataset: {name: digits}
    architecture: {type: small_cnn, channels: [16, 16, 16]}
    hparams:
      optimizer: [sgd, adam, rmsprop]          # a list = uniform choice
      lr: {log_uniform: [5.0e-4, 5.0e-2]}      # also {uniform: [lo, hi]}, {choice: [...]}
      train_fraction: 1.0                      # a scalar = constant
    training: {batch_size: 32, epochs: 20, checkpoints: [1, 2, 5, 10, 20]}
    generation: {num_models: 2000, models_per_chunk: 128, seed: 0}
    splits: {train: 0.8, val: 0.1, test: 0.1, seed: 0}

Everything about model ``i`` -- hyperparameters, seeds, and (for ``wild``) its
architecture -- is a function of ``(generation.seed, i)`` only (numpy
``SeedSequence([seed, i])``), so shards of the model indices can be generated
independently (dropout noise is drawn per chunk of models, so chunks must
match too). Architecture types: ``small_cnn`` and ``mlp`` (fixed shape,
per-model ``activation`` hparam), ``wild`` (see :func:`sample_architecture`:
one architecture per block of ``models_per_arch`` consecutive models, the
activation being part of the architecture) and ``siren`` (task ``siren``, see
:mod:`wsl.zoo.siren`). Initialisation: :func:`init_rows`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from wsl.errors import ConfigError
from wsl.io.yaml_file import read_yaml_mapping

if TYPE_CHECKING:
    from wsl.zoo.vectorized import VecNet

ARCH_TYPES = ("small_cnn", "mlp", "wild", "siren")
HPARAMS = ("activation", "optimizer", "lr", "weight_decay", "dropout", "w_init", "init_std", "train_fraction")
_CHOICES = {"activation": ("relu", "tanh", "gelu", "sigmoid", "silu", "leaky_relu"),
            "optimizer": ("sgd", "adam", "rmsprop"), "w_init": ("normal", "uniform", "orthogonal")}
_RANGES = {"lr": (0.0, math.inf, False), "weight_decay": (0.0, math.inf, True), "dropout": (0.0, 1.0, True),
           "init_std": (0.0, math.inf, False), "train_fraction": (0.0, 1.0, False)}


def _err(where: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {msg}")


@dataclass(frozen=True)
class Dist:
    """A hyperparameter distribution: ``choice`` of values, ``uniform``/``log_uniform`` on [lo, hi]."""

    kind: str
    values: tuple[Any, ...]

    @classmethod
    def parse(cls, spec: Any, where: str) -> "Dist":
        """A distribution from YAML: list (choice), scalar (constant) or ``{kind: ...}``."""
        if isinstance(spec, list):
            spec = {"choice": spec}
        if not isinstance(spec, dict):
            return cls("choice", (spec,))
        if len(spec) != 1 or next(iter(spec)) not in ("choice", "uniform", "log_uniform"):
            raise _err(where, f"expected a value, a list, or one of {{choice: [...]}}, {{uniform: [lo, hi]}}, "
                       f"{{log_uniform: [lo, hi]}}; got {spec!r}")
        kind, values = next(iter(spec.items()))
        if not isinstance(values, list) or not values:
            raise _err(f"{where}.{kind}", f"expected a non-empty list, got {values!r}")
        if kind != "choice":
            if len(values) != 2 or not all(_is_num(v) for v in values) or values[0] > values[1]:
                raise _err(f"{where}.{kind}", f"expected [lo, hi] numbers with lo <= hi, got {values!r}")
            if kind == "log_uniform" and values[0] <= 0:
                raise _err(f"{where}.{kind}", f"bounds must be > 0, got {values!r}")
        return cls(kind, tuple(values))

    def sample(self, rng: np.random.Generator) -> Any:
        """One value (the generator is always advanced by exactly one draw)."""
        u = float(rng.random())
        if self.kind == "choice":
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        lo, hi = (float(v) for v in self.values)
        if self.kind == "uniform":
            return lo + u * (hi - lo)
        return float(math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))))

    def support(self) -> list[Any]:
        """Values (choice) or bounds (ranges), for validation."""
        return list(self.values)

    def card(self) -> Any:
        """JSON form for the zoo card."""
        return {self.kind: list(self.values)}


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(d: dict[str, Any], key: str, where: str, default: Any = None, lo: int = 1) -> int:
    v = d.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise _err(f"{where}.{key}", f"expected an int >= {lo}, got {v!r}")
    return v


def _keys(d: Any, where: str, allowed: set[str], required: set[str] = frozenset()) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise _err(where, f"expected a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise _err(f"{where}.{unknown[0]}", f"unknown field; valid: {', '.join(sorted(allowed))}")
    missing = sorted(required - set(d))
    if missing:
        raise _err(f"{where}.{missing[0]}", "missing required field")
    return d


@dataclass(frozen=True)
class Recipe:
    """A validated recipe; :attr:`raw` is the effective YAML content (after overrides)."""

    raw: dict[str, Any]
    source: str

    name = property(lambda self: str(self.raw["name"]))
    task = property(lambda self: str(self.raw.get("task", "classification")))
    dataset = property(lambda self: dict(self.raw["dataset"]))
    architecture = property(lambda self: dict(self.raw["architecture"]))
    training = property(lambda self: dict(self.raw["training"]))
    generation = property(lambda self: dict(self.raw["generation"]))

    @property
    def hparams(self) -> dict[str, Dist]:
        """Hyperparameter distributions by name."""
        return {k: Dist.parse(v, f"hparams.{k}") for k, v in self.raw.get("hparams", {}).items()}

    @property
    def splits(self) -> dict[str, Any]:
        """The zoo's train/val/test rule over models."""
        return dict(self.raw.get("splits", {"train": 0.8, "val": 0.1, "test": 0.1, "seed": 0}))

    def with_overrides(self, *, num_models: int | None = None, epochs: int | None = None, seed: int | None = None,
                       models_per_chunk: int | None = None) -> "Recipe":
        """A copy with command-line overrides applied (and re-validated)."""
        raw = copy.deepcopy(self.raw)
        gen, train = raw["generation"], raw["training"]
        if num_models is not None:
            gen["num_models"] = num_models
        if seed is not None:
            gen["seed"] = seed
        if models_per_chunk is not None:
            gen["models_per_chunk"] = models_per_chunk
        if epochs is not None:
            key = "steps" if raw.get("task") == "siren" else "epochs"
            train[key] = epochs
            train["checkpoints"] = sorted({c for c in train.get("checkpoints", []) if c <= epochs} | {epochs})
        return parse_recipe(raw, f"{self.source} (with overrides)")


def parse_recipe(raw: Any, source: str = "<recipe>") -> Recipe:
    """Validate a recipe mapping; raise ConfigError naming the field."""
    where = source
    top = _keys(raw, where, {"name", "version", "description", "task", "dataset", "architecture", "hparams",
                             "training", "generation", "splits"},
                {"name", "dataset", "architecture", "training", "generation"})
    if not isinstance(top["name"], str) or not top["name"].strip():
        raise _err(f"{where}: name", f"expected a non-empty string, got {top['name']!r}")
    task = top.get("task", "classification")
    if task not in ("classification", "siren"):
        raise _err(f"{where}: task", f"expected 'classification' or 'siren', got {task!r}")
    _keys(top["dataset"], f"{where}: dataset", {"name", "resolution"}, {"name"})
    arch = _keys(top["architecture"], f"{where}: architecture", {
        "type", "channels", "kernel_size", "stride", "norm", "hidden", "w0", "models_per_arch", "cnn_fraction",
        "conv_layers", "widths", "kernels", "strides", "first_stride", "batchnorm", "residual", "activations",
        "mlp_layers",
        "mlp_widths"}, {"type"})
    if arch["type"] not in ARCH_TYPES:
        raise _err(f"{where}: architecture.type", f"expected one of {', '.join(ARCH_TYPES)}, got {arch['type']!r}")
    if (arch["type"] == "siren") != (task == "siren"):
        raise _err(f"{where}: architecture.type", "architecture 'siren' goes with task 'siren' (and only it)")
    gen = _keys(top["generation"], f"{where}: generation", {"num_models", "models_per_chunk", "seed"})
    _int(gen, "models_per_chunk", f"{where}: generation", 128)
    _int(gen, "seed", f"{where}: generation", 0, lo=0)
    if gen.get("num_models") is not None or task != "siren":
        _int(gen, "num_models", f"{where}: generation")
    train_keys = {"batch_size", "epochs", "checkpoints"} if task == "classification" else \
        {"steps", "lr", "fits_per_image", "checkpoints", "init"}
    train = _keys(top["training"], f"{where}: training", train_keys)
    length_key = "epochs" if task == "classification" else "steps"
    length = _int(train, length_key, f"{where}: training")
    ckpts = train.get("checkpoints", [length])
    if not isinstance(ckpts, list) or not ckpts or not all(isinstance(c, int) and 0 <= c <= length for c in ckpts):
        raise _err(f"{where}: training.checkpoints", f"expected a list of ints in [0, {length}], got {ckpts!r}")
    if task == "classification":
        _int(train, "batch_size", f"{where}: training")
        _check_hparams(top.get("hparams", {}), arch["type"], f"{where}: hparams")
    else:
        _int(train, "fits_per_image", f"{where}: training", 1)
        if train.get("init", "independent") not in ("independent", "shared"):
            raise _err(f"{where}: training.init", f"expected 'independent' or 'shared', got {train.get('init')!r}")
        if not _is_num(train.get("lr", 1e-3)) or train.get("lr", 1e-3) <= 0:
            raise _err(f"{where}: training.lr", f"expected a positive number, got {train.get('lr')!r}")
    return Recipe(copy.deepcopy(top), source)


def _check_hparams(hp: Any, arch_type: str, where: str) -> None:
    needed = set(HPARAMS) - ({"activation"} if arch_type == "wild" else set())
    hp = _keys(hp, where, needed, needed)
    for key, spec in hp.items():
        dist = Dist.parse(spec, f"{where}.{key}")
        if key in _CHOICES:
            if dist.kind != "choice":
                raise _err(f"{where}.{key}", f"expected a list of names from {list(_CHOICES[key])}")
            bad = [v for v in dist.support() if v not in _CHOICES[key]]
            if bad:
                raise _err(f"{where}.{key}", f"unknown value {bad[0]!r}; valid: {', '.join(_CHOICES[key])}")
            continue
        lo, hi, lo_ok = _RANGES[key]
        for v in dist.support():
            if not _is_num(v) or v < lo or (v == lo and not lo_ok) or v > hi or (key == "dropout" and v >= 1):
                raise _err(f"{where}.{key}", f"value {v!r} out of range ({'[' if lo_ok else '('}{lo}, {hi}"
                           f"{')' if key == 'dropout' else ']'})")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file."""
    p = Path(path)
    raw = read_yaml_mapping(p, what="recipe")
    return parse_recipe(raw, str(p))


# ------------------------------------------------------------------- sampling
def model_seeds(seed: int, index: int) -> tuple[int, int, int]:
    """``(init, subset, order)`` seeds of model ``index``; the first is recorded as the row's ``seed``."""
    s = np.random.SeedSequence([int(seed), int(index)]).generate_state(3, np.uint32)
    return int(s[0]), int(s[1]), int(s[2])


def sample_hparams(recipe: Recipe, index: int) -> dict[str, Any]:
    """Model ``index``'s hyperparameters (keys drawn in sorted order from ``SeedSequence([seed, index, 1])``)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(recipe.generation.get("seed", 0)), int(index), 1]))
    out = {}
    for key, dist in sorted(recipe.hparams.items()):
        v = dist.sample(rng)
        out[key] = float(v) if key in _RANGES else v
    return out


def sample_architecture(recipe: Recipe, index: int, *, input_shape: tuple[int, ...],
                        num_classes: int) -> dict[str, Any]:
    """The inference architecture (``"wsl.arch/1"``, dropout p = 0) of model ``index``.

    ``small_cnn``/``mlp``: the builtin with the model's ``activation``.
    ``wild``: sampled from ``SeedSequence([seed, block, 2])`` with ``block =
    index // models_per_arch`` -- a CNN (probability ``cnn_fraction``) of
    ``conv_layers`` convolutions (width from ``widths``, kernel from
    ``kernels`` with padding k//2, stride from ``strides``; optional
    BatchNorm for the whole net, then the convolutions have no bias; each later layer becomes a residual block
    of stride 1 and unchanged width with probability 1/2 if ``residual``
    allows it), then global average pooling and a linear classifier; or an
    MLP on the flattened input with ``mlp_layers`` hidden layers of widths
    from ``mlp_widths``. Dropout layers (p = 0) follow every activation.
    """
    from wsl.archs import describe, mlp, small_cnn

    a = recipe.architecture
    t = a["type"]
    if t == "small_cnn":
        act = sample_hparams(recipe, index).get("activation", "relu")
        return describe(small_cnn(in_channels=input_shape[0], channels=tuple(a.get("channels", (16, 16, 16))),
                                  num_classes=num_classes, kernel_size=a.get("kernel_size", 3),
                                  stride=a.get("stride", 2), activation=act, dropout=0.0, norm=a.get("norm")))
    if t == "mlp":
        act = sample_hparams(recipe, index).get("activation", "relu")
        sizes = [math.prod(input_shape), *a.get("hidden", [64, 64]), num_classes]
        return describe(mlp(sizes, activation=act, dropout=0.0))
    if t != "wild":
        raise ConfigError(f"architecture.type '{t}' has no classifier architecture")
    block = index // _int(a, "models_per_arch", "architecture", 20)
    rng = np.random.default_rng(np.random.SeedSequence([int(recipe.generation.get("seed", 0)), block, 2]))

    def pick(key: str, default: list[Any]) -> Any:
        options = a.get(key, default)
        if not isinstance(options, list) or not options:
            raise ConfigError(f"architecture.{key}: expected a non-empty list, got {options!r}")
        return options[int(rng.integers(len(options)))]

    act = pick("activations", ["relu", "tanh", "gelu"])
    if act not in _CHOICES["activation"]:
        raise ConfigError(f"architecture.activations: unknown activation {act!r}")
    tail = [{"type": act}, {"type": "dropout", "p": 0.0}]
    cnn = rng.random() < float(a.get("cnn_fraction", 0.75))
    layers: list[dict[str, Any]] = []
    if cnn and len(input_shape) == 3:
        bn = bool(pick("batchnorm", [False, True]))
        c_in = input_shape[0]
        for i in range(int(pick("conv_layers", [2, 3, 4]))):
            width, k, stride = pick("widths", [8, 16, 32]), pick("kernels", [3, 5]), pick("strides", [1, 2])
            if i == 0 and a.get("first_stride") is not None:
                stride = int(a["first_stride"])
            residual = bool(pick("residual", [False, True])) and i > 0 and rng.random() < 0.5
            if residual:
                width, stride = c_in, 1
            conv = [{"type": "conv2d", "out_channels": width, "kernel_size": k, "stride": stride,
                     "padding": k // 2, "bias": not bn}] + ([{"type": "batchnorm2d"}] if bn else []) + [{"type": act}]
            layers += [{"type": "residual", "body": conv, "shortcut": None}, tail[1]] if residual else conv + [tail[1]]
            c_in = width
        layers += [{"type": "global_avg_pool"}]
    else:
        layers.append({"type": "flatten"})
        for _ in range(int(pick("mlp_layers", [1, 2, 3]))):
            layers += [{"type": "linear", "out_features": int(pick("mlp_widths", [16, 32, 64]))}, *tail]
    layers.append({"type": "linear", "out_features": num_classes})
    from wsl.archs.describe import validate

    return validate({"format": "wsl.arch/1", "kind": "sequential", "input_shape": list(input_shape),
                     "layers": layers})


def init_rows(net: "VecNet", schemes: Sequence[tuple[str, float]], seeds: Sequence[int]) -> torch.Tensor:
    """Initial flat parameters ``(n, P)`` (CPU), one row per ``(w_init, init_std)`` and seed.

    Conv/linear weights: ``normal`` N(0, std^2); ``uniform`` U(-sqrt(3) std,
    sqrt(3) std) (same std); ``orthogonal`` -- ``torch.nn.init.orthogonal_`` on
    the ``(out, fan_in)`` matrix, rescaled so the root-mean-square entry is
    ``std`` (i.e. multiplied by ``std * sqrt(max(out, fan_in))``). Biases 0;
    batch-norm weights 1, biases 0.
    """
    rows = torch.zeros(len(seeds), net.num_params)
    for i, ((scheme, std), seed) in enumerate(zip(schemes, seeds)):
        g = torch.Generator().manual_seed(int(seed))
        for e in net.entries.values():
            if e.role == "buffer":
                continue
            if e.role == "weight":
                w = torch.empty(e.shape)
                if scheme == "normal":
                    torch.nn.init.normal_(w, 0.0, std, generator=g)
                elif scheme == "uniform":
                    bound = math.sqrt(3.0) * std
                    torch.nn.init.uniform_(w, -bound, bound, generator=g)
                elif scheme == "orthogonal":
                    torch.nn.init.orthogonal_(w, 1.0, generator=g)
                    w *= std * math.sqrt(max(e.shape[0], e.fan_in))
                else:
                    raise ConfigError(f"w_init: unknown scheme {scheme!r}; valid: normal, uniform, orthogonal")
                value = w.reshape(-1)
            else:
                value = torch.full((e.numel,), 1.0 if e.role == "norm_weight" else 0.0)
            rows[i, e.offset:e.offset + e.numel] = value
    return rows

"""Experiment configuration for ``wsl train``: YAML files, dataclasses, ``key=value`` overrides.

A config names its task, has eight sections and an output directory::

    task:     generalization (default) | inr_classification | inr_editing

    data:     {zoo, target, checkpoints, train_checkpoints, train_split, val_split, test_split, arch, max_train, stats_layout, verify}
    model:    {name, <any constructor argument of that model, e.g. hidden, layers>}
    optim:    {name: adamw|adam|sgd, lr, weight_decay, momentum, betas, grad_clip}
    schedule: {name: cosine|constant, warmup_epochs, min_lr_ratio}
    augment:  {permute, noise, sign_flip}
    inr:      {edit, normalize}   -- INR tasks only (wsl.tasks.inr_data)
    probes:   {num, seed, kind: mixed|uniform|strokes|mixed+strokes, invert, invert_steps, invert_tv, learn, embed,
               hidden}  -- probe features fused into the head (off while num + invert == 0)
    train:    {epochs, batch_size, eval_batch_size, seed, device: auto|cpu|cuda|cuda:N, amp, amp_dtype: bf16|fp16,
               patience, loss: mse|l1|huber, drop_last, progress, threads, find_unused_parameters}
    output:   run directory (default ``runs/<config file stem>``)

Every section and key is optional except ``data.zoo`` and ``model.name``. A relative
``data.zoo`` is read from the current directory. A file may start from others with
``extends: base.yaml`` (or a list); see :mod:`wsl.train.config_files`.
Overrides address nested keys with dots (``model.hidden=64 optim.lr=1e-3``);
values are parsed as YAML scalars (``true``, ``1e-3``, ``null``, ``[1, 2]``).
Unknown sections/keys raise :class:`~wsl.errors.ConfigError` naming the key
and the closest valid one. Model arguments are checked against the model's
constructor when the model is built (:mod:`wsl.train.registry`).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from wsl.errors import ConfigError
from wsl.train.config_values import coerce as _coerce

__all__ = ["AugmentConfig", "Config", "DataConfig", "InrConfig", "ModelConfig", "OptimConfig", "ProbeConfig", "ScheduleConfig",
           "TrainConfig",
           "apply_overrides", "load_config"]

CHOICES: dict[str, tuple[str, ...]] = {
    "data.checkpoints": ("last", "all"),
    "data.train_checkpoints": ("same", "last", "all"),
    "data.transform": ("none", "signed_log"),
    "data.stats_layout": ("auto", "per_tensor", "buckets"),
    "data.verify": ("lazy", "eager", "none"),
    "probes.kind": ("mixed", "uniform", "strokes", "mixed+strokes"),
    "optim.name": ("adamw", "adam", "sgd"),
    "schedule.name": ("cosine", "constant"),
    "train.amp_dtype": ("bf16", "fp16"),
    "train.loss": ("mse", "l1", "huber"),
    "inr.edit": ("dilate", "erode", "contrast", "gaussian_blur"),
}
TASKS = ("generalization", "inr_classification", "inr_editing")


@dataclass
class DataConfig:
    """Which zoo, target and checkpoints; which splits play train/val/test."""

    zoo: str = ""
    target: str = "test_accuracy"  #: "test_accuracy", "gap" (train - test accuracy) or any numeric row field
    checkpoints: str = "last"  #: "last" (final epoch per model) or "all"
    #: checkpoints of the *training* models: "same" as ``checkpoints``, or "all" (every recorded epoch of a
    #: training model is a training example; val/test keep ``checkpoints``; splits are per model, so no leak)
    train_checkpoints: str = "same"
    #: elementwise input transform of the weights for learned models ("signed_log": sign(w) log1p(|w|/1e-3))
    transform: str = "none"
    train_split: str = "train"
    val_split: str = "val"
    test_split: str = "test"
    arch: str | None = None  #: keep only rows of this arch id (dense models need a single architecture)
    max_train: int | None = None  #: cap the number of training rows (quick runs)
    stats_layout: str = "auto"  #: StatNN feature layout for "stats" models
    verify: str = "lazy"  #: zoo checksum verification (see wsl.zoo.load_zoo)


@dataclass
class ModelConfig:
    """A registered model name (or ``module:factory`` / ``file.py:factory``) and its arguments."""

    name: str = ""
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  #: sgd only
    betas: tuple[float, float] = (0.9, 0.999)  #: adam/adamw only
    grad_clip: float | None = None  #: max global grad norm


@dataclass
class ScheduleConfig:
    name: str = "cosine"  #: per-step cosine decay to ``min_lr_ratio * lr``, or constant
    warmup_epochs: float = 0.0  #: linear warmup from 0, in (fractional) epochs
    min_lr_ratio: float = 0.0


@dataclass
class AugmentConfig:
    """Per-training-batch augmentation in weight space."""

    permute: bool = False  #: apply a random element of the network's permutation group to every model
    noise: float = 0.0  #: Gaussian noise, std = noise * (std of that tensor in that model); 0 = off
    #: random sign flips of hidden units (networks with odd activations: SIRENs; INR tasks only)
    sign_flip: bool = False


@dataclass
class InrConfig:
    """Settings of the INR tasks (``task: inr_classification`` / ``inr_editing``)."""

    edit: str = "dilate"  #: editing: the image edit the meta-model learns (wsl.tasks.inr_edits)
    normalize: bool = True  #: learned models read each tensor divided by its training-split RMS


@dataclass
class ProbeConfig:
    """Probe features next to the meta-model's embedding (:mod:`wsl.tasks.probes`, :mod:`wsl.nn.probed`)."""

    num: int = 0  #: number of synthetic probe inputs of ``kind`` (probes are off while num + invert == 0)
    seed: int = 0  #: seed of the probe inputs
    kind: str = "mixed"  #: "mixed" (noise, low-frequency noise, binary images), "uniform", "strokes", "mixed+strokes"
    #: number of probes synthesized by inverting the training split's networks (wsl.tasks.inversion), after the ``num``
    invert: int = 0
    invert_steps: int = 300  #: Adam steps of the inversion
    invert_tv: float = 0.5  #: weight of the total-variation (smoothness) term of the inversion
    learn: bool = False  #: train the probe inputs with the model (they start at the synthetic ones)
    embed: int = 64  #: output width of the meta-model and of the probe branch
    hidden: int = 128  #: hidden width of the probe branch and of the fusion MLP

    @property
    def total(self) -> int:
        """Probe inputs in all (0 = probe features off)."""
        return self.num + self.invert


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64  #: global batch size (split across ranks under torchrun)
    eval_batch_size: int = 256
    seed: int = 0
    device: str = "auto"  #: auto (cuda if available), cpu, cuda, cuda:N
    amp: bool = False  #: autocast on CUDA; ignored (with a note) on CPU
    amp_dtype: str = "bf16"
    patience: int = 0  #: early stopping on val tau after this many epochs without improvement; 0 = off
    loss: str = "mse"
    drop_last: bool = False
    progress: bool = True
    threads: int | None = None  #: torch.set_num_threads (per process)
    find_unused_parameters: bool = True  #: DDP only; false is faster when every parameter is used every step


@dataclass
class Config:
    """A full experiment (see module docstring)."""

    task: str = "generalization"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inr: InrConfig = field(default_factory=InrConfig)
    output: str | None = None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], where: str = "config") -> "Config":
        """Build and validate a config from a plain (YAML-parsed) dict."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where}: expected a mapping at the top level, got {type(raw).__name__}")
        sections = {f.name: f for f in dataclasses.fields(cls)}
        _unknown(raw, list(sections), where, "")
        kw: dict[str, Any] = {}
        for name, value in raw.items():
            if name == "output":
                kw[name] = None if value is None else str(value)
            elif name == "task":
                if value not in TASKS:
                    raise ConfigError(f"{where}: task is {value!r}; valid: {', '.join(TASKS)}")
                kw[name] = value
            elif name == "model":
                kw[name] = _model(value, where)
            else:
                kw[name] = _section(_section_types()[name], value, where, name)
        cfg = cls(**kw)
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "config") -> None:
        """Check required keys, choices and ranges; raise ConfigError naming the key."""
        if not self.data.zoo:
            raise ConfigError(f"{where}: data.zoo is required (a zoo directory or hf:// URI)")
        if not self.model.name:
            raise ConfigError(f"{where}: model.name is required (see wsl.train.registry.MODELS)")
        for key, valid in CHOICES.items():
            sec, name = key.split(".")
            value = getattr(getattr(self, sec), name)
            if value not in valid:
                raise ConfigError(f"{where}: {key} is {value!r}; valid: {', '.join(valid)}")
        dev = self.train.device
        if not (dev in ("auto", "cpu", "cuda", "mps") or dev.startswith("cuda:")):
            raise ConfigError(f"{where}: train.device is {dev!r}; valid: auto, cpu, cuda, cuda:N, mps")
        positive = {"train.epochs": self.train.epochs, "train.batch_size": self.train.batch_size,
                    "train.eval_batch_size": self.train.eval_batch_size, "optim.lr": self.optim.lr}
        for key, v in positive.items():
            if not v > 0:
                raise ConfigError(f"{where}: {key} must be > 0, got {v}")
        nonneg = {"train.patience": self.train.patience, "augment.noise": self.augment.noise,
                  "optim.weight_decay": self.optim.weight_decay, "schedule.warmup_epochs": self.schedule.warmup_epochs,
                  "schedule.min_lr_ratio": self.schedule.min_lr_ratio}
        for key, v in nonneg.items():
            if not (v >= 0 and math.isfinite(v)):
                raise ConfigError(f"{where}: {key} must be >= 0, got {v}")
        for key in ("num", "invert", "invert_steps", "invert_tv", "embed", "hidden"):
            v = getattr(self.probes, key)
            low = 1 if key in ("embed", "hidden") else 0
            if not (v >= low and math.isfinite(v)):
                raise ConfigError(f"{where}: probes.{key} must be >= {low}, got {v}")
        if self.data.max_train is not None and self.data.max_train < 1:
            raise ConfigError(f"{where}: data.max_train must be >= 1 or null, got {self.data.max_train}")
        splits = (self.data.train_split, self.data.val_split, self.data.test_split)
        for key, s in zip(("train_split", "val_split", "test_split"), splits):
            if s not in ("train", "val", "test"):
                raise ConfigError(f"{where}: data.{key} is {s!r}; valid: train, val, test")
        if self.data.train_split in (self.data.val_split, self.data.test_split):
            raise ConfigError(f"{where}: data.train_split ({self.data.train_split!r}) must differ from the "
                              "val/test splits: never evaluate on training models")
        if self.task == "generalization" and self.augment.sign_flip:
            raise ConfigError(f"{where}: augment.sign_flip is for INR tasks (SIREN sign symmetries); "
                              "set task: inr_classification or inr_editing, or remove it")
        if self.task.startswith("inr_") and self.probes.total:
            raise ConfigError(f"{where}: probes are not used by task {self.task}; remove the probes section")
        if self.task == "inr_editing" and self.augment.noise > 0:
            raise ConfigError(f"{where}: augment.noise changes the INR's function, so the edit target would no "
                              "longer match; use permute/sign_flip for task inr_editing")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict; ``Config.from_dict(cfg.to_dict())`` round-trips."""
        out = dataclasses.asdict(self)
        params = out["model"].pop("params")
        out["model"].update(params)
        out["optim"]["betas"] = list(self.optim.betas)
        return out


def _section_types() -> dict[str, type]:
    return {"data": DataConfig, "optim": OptimConfig, "schedule": ScheduleConfig, "augment": AugmentConfig,
            "probes": ProbeConfig, "train": TrainConfig, "inr": InrConfig}


def _unknown(raw: Mapping[str, Any], valid: Sequence[str], where: str, prefix: str) -> None:
    for key in raw:
        if key not in valid:
            full = f"{prefix}{key}"
            close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"{where}: unknown key '{full}'{hint}")


def _model(value: Any, where: str) -> ModelConfig:
    if isinstance(value, str):
        return ModelConfig(name=value)
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: 'model' must be a mapping with a 'name', got {type(value).__name__}")
    params = {str(k): v for k, v in value.items() if k != "name"}
    name = value.get("name", "")
    if not isinstance(name, str):
        raise ConfigError(f"{where}: model.name must be a string, got {name!r}")
    return ModelConfig(name=name, params=params)


def _section(cls: type, value: Any, where: str, name: str) -> Any:
    if value is None:
        return cls()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: section '{name}' must be a mapping, got {type(value).__name__}")
    hints = typing.get_type_hints(cls)
    _unknown(value, list(hints), where, f"{name}.")
    return cls(**{k: _coerce(v, hints[k], where, f"{name}.{k}") for k, v in value.items()})


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str], where: str = "override") -> dict[str, Any]:
    """A copy of ``raw`` with each ``a.b.c=value`` applied (creating sections as needed)."""
    import copy

    out = copy.deepcopy(dict(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{where} {item!r}: expected key=value (e.g. optim.lr=1e-3)")
        key, _, text = item.partition("=")
        parts = [p for p in key.strip().split(".")]
        if not all(parts):
            raise ConfigError(f"{where} {item!r}: empty key component in '{key}'")
        node: dict[str, Any] = out
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if isinstance(nxt, str) and i == 0 and p == "model":
                nxt = node[p] = {"name": nxt}
            if not isinstance(nxt, dict):
                raise ConfigError(f"{where} {item!r}: '{'.'.join(parts[:i + 1])}' is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(text)
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = (),
                raw: Mapping[str, Any] | None = None) -> Config:
    """Read a YAML config (or use ``raw``), resolve its ``extends``, apply overrides, validate.

    ``extends`` and merging: :mod:`wsl.train.config_files`. When ``output`` is
    unset it defaults to ``runs/<config file stem>``.
    """
    from wsl.train.config_files import read_config_file

    where = str(path) if path is not None else "config"
    if raw is None:
        if path is None:
            raise ConfigError("load_config: give a YAML path or a raw dict")
        raw = read_config_file(path)
    merged = apply_overrides(raw, overrides)
    cfg = Config.from_dict(merged, where)
    if cfg.output is None and path is not None:
        cfg.output = str(Path("runs") / Path(path).stem)
    return cfg

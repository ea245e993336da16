"""A NeuMeta run: YAML config -> base network -> (smoothing) -> fit -> run directory.

Run directory layout::

    RUN/
      config.json        the resolved config (every default filled in)
      base.safetensors   the base network as trained/loaded (carries its architecture)
      hyper.safetensors  NeuMeta weights; metadata "wsl_hyper" = model config JSON
      metrics.json       accuracy per width ratio (BatchNorm statistics recomputed on the
                         first 1,024 training inputs), total variation before/after smoothing,
                         sizes in bytes, timings, the loss history (every 50th step)
      README.md          a short model card
      loss.png           task / distillation / reconstruction loss vs step (with matplotlib)
      accuracy.png       test accuracy vs width ratio, the base marked (with matplotlib)
      checkpoint/        every checkpoint_every steps: hyper.safetensors, optimizer.pt,
                         state.json (step), target.safetensors (the smoothed base); --resume reads it

Config (YAML; every key optional except ``dataset``)::

    dataset: digits                  # wsl.zoo.data.load_dataset name
    base: {checkpoint: PATH}         # or {arch: {name: small_cnn, kwargs: {}}, steps: 1500, lr: 0.003}
    smooth: true                     # reorder units along a shortest path before fitting
    solver: auto                     # auto | fast_tsp | two_opt
    model: {hidden: 128, blocks: 3, embed: 16, frequencies: 6, fan_in_scaling: true}
    train: {steps: 4000, batch: 128, lr: 0.003, ...}       # wsl.hyper.train.HyperTrainConfig
    eval_ratios: [0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]
    seed: 0
    checkpoint_every: 1000           # 0: no checkpoints

Under ``torchrun`` (process group initialised by the caller, e.g. ``wsl hyper
train``) every rank builds the same base, rank 0's smoothed base and
hypernetwork initialisation are broadcast, the widths of each step are dealt
across ranks (:func:`wsl.hyper.train.train_neumeta`), and only rank 0 writes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from wsl.archs.describe import build
from wsl.errors import CheckpointError, ConfigError
from wsl.hyper.neumeta import NeuMeta, NeuMetaConfig
from wsl.hyper.smooth import smooth, total_variation
from wsl.hyper.train import HyperTrainConfig, accuracy, train_classifier, train_neumeta
from wsl.hyper.plots import plot_run
from wsl.io import atomic_save_safetensors, atomic_write, load_model, local_path, save_module
from wsl.space import WeightSpace
from wsl.zoo.data import load_dataset

RATIOS = (0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
CALIBRATION = 1024
"""Training inputs used to recompute BatchNorm statistics of a sampled network (the first ones)."""
_TOP = {"dataset", "base", "smooth", "solver", "model", "train", "eval_ratios", "seed", "checkpoint_every"}


def _dataclass_from(cls: Any, d: Any, where: str) -> Any:
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid: {', '.join(sorted(names))}")
    return cls(**d)


def resolve_config(raw: dict[str, Any]) -> dict[str, Any]:
    """Check a run config and fill in every default (see module docstring)."""
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise ConfigError(f"hyper config: unknown key(s) {unknown}; valid: {', '.join(sorted(_TOP))}")
    if "dataset" not in raw:
        raise ConfigError("hyper config: 'dataset' is required (e.g. digits or mnist1d)")
    base = dict(raw.get("base") or {})
    if "checkpoint" not in base:
        base.setdefault("arch", {"name": "small_cnn", "kwargs": {}})
        base.setdefault("steps", 1500)
        base.setdefault("lr", 3e-3)
    model = dict(raw.get("model") or {})
    train = asdict(_dataclass_from(HyperTrainConfig, raw.get("train"), "hyper config: train"))
    solver = raw.get("solver", "auto")
    if solver not in ("auto", "fast_tsp", "two_opt"):
        raise ConfigError(f"hyper config: solver must be auto, fast_tsp or two_opt, got {solver!r}")
    ratios = [float(r) for r in raw.get("eval_ratios", RATIOS)]
    every = raw.get("checkpoint_every", 1000)
    if not isinstance(every, int) or isinstance(every, bool) or every < 0:
        raise ConfigError(f"hyper config: checkpoint_every must be an int >= 0 (0: never), got {every!r}")
    return {"dataset": str(raw["dataset"]), "base": base, "smooth": bool(raw.get("smooth", True)),
            "solver": solver, "model": model, "train": train, "eval_ratios": ratios, "seed": int(raw.get("seed", 0)),
            "checkpoint_every": every}


def make_base(cfg: dict[str, Any], data: Any) -> torch.nn.Module:
    """Load ``base.checkpoint`` or train ``base.arch`` for ``base.steps`` steps."""
    b = cfg["base"]
    if "checkpoint" in b:
        module, _ = load_model(b["checkpoint"])
        return module
    arch = b["arch"]
    if not isinstance(arch, dict) or "name" not in arch:
        raise ConfigError("hyper config: base.arch must be a mapping with 'name' (and optional 'kwargs')")
    torch.manual_seed(cfg["seed"])
    module = build({"format": "wsl.arch/1", "kind": "builtin", "name": arch["name"],
                    "kwargs": dict(arch.get("kwargs") or {})})
    return train_classifier(module, data.x_train, data.y_train, steps=int(b["steps"]), lr=float(b["lr"]),
                            seed=cfg["seed"])


def run(cfg: dict[str, Any], out: str | Path, progress: Callable[[int, dict[str, float]], None] | None = None,
        on_phase: Callable[[str], None] | None = None, resume: bool = False) -> dict[str, Any]:
    """Execute a resolved config; write the run directory ``out``; return the metrics.

    Every ``checkpoint_every`` steps ``out/checkpoint/`` receives the hypernetwork, the optimizer
    state and the step; ``resume=True`` continues from there (the base and its smoothed version
    are read back from ``base.safetensors`` / ``checkpoint/target.safetensors``).
    """
    out = Path(out)
    rank = _rank()
    writer = rank == 0
    if writer:
        out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint"
    say = on_phase or (lambda s: None)
    data = load_dataset(cfg["dataset"])
    t0 = time.perf_counter()
    start, opt_state = 0, None
    if resume:
        if not (ckpt / "state.json").is_file():
            raise CheckpointError(f"hyper: --resume: {ckpt / 'state.json'} not found; nothing to resume")
        base, _ = load_model(out / "base.safetensors")
        state = load_file(str(ckpt / "target.safetensors"))
        start = int(json.loads((ckpt / "state.json").read_text())["step"])
        opt_state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    else:
        say("base")
        base = make_base(cfg, data)
        if writer:
            save_module(base, out / "base.safetensors")
        state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    base_acc = accuracy(base, data.x_test, data.y_test)
    space = WeightSpace.from_module(base)
    tv_before = total_variation(space, base.state_dict())
    if cfg["smooth"] and not resume:
        say("smooth")
        state, _ = smooth(space, state, cfg["solver"])
    _broadcast(state)  # fast-tsp is time-limited: ranks could smooth differently
    tv_after = total_variation(space, state)
    t_base = time.perf_counter() - t0
    torch.manual_seed(cfg["seed"])
    hyper = NeuMeta(NeuMetaConfig(arch=dict(base.wsl_arch), **cfg["model"]), state)
    if resume:
        hyper.load_state_dict(load_file(str(ckpt / "hyper.safetensors")))
    _broadcast(hyper.state_dict())

    def checkpoint(step: int, opt: dict[str, Any]) -> None:
        if not writer:
            return
        ckpt.mkdir(exist_ok=True)
        atomic_save_safetensors({k: v.contiguous() for k, v in state.items()}, ckpt / "target.safetensors")
        save_hyper(hyper, ckpt / "hyper.safetensors")
        with atomic_write(ckpt / "optimizer.pt") as tmp:
            torch.save(opt, tmp)
        with atomic_write(ckpt / "state.json") as tmp:
            Path(tmp).write_text(json.dumps({"step": step}))

    say("fit")
    t1 = time.perf_counter()
    fit = train_neumeta(hyper, state, data.x_train, data.y_train, HyperTrainConfig(**cfg["train"]), progress,
                        start_step=start, optimizer_state=opt_state, on_checkpoint=checkpoint,
                        checkpoint_every=int(cfg.get("checkpoint_every", 0)))
    t_fit = time.perf_counter() - t1
    if not writer:
        return {"rank": rank}
    calib = data.x_train[:CALIBRATION]
    accs = {str(r): accuracy(hyper.sample(r, calib), data.x_test, data.y_test) for r in cfg["eval_ratios"]}
    extra = {}
    if hyper.has_batchnorm and hyper.config.generate_statistics:  # both BatchNorm routes, measured
        extra["accuracy_generated_statistics"] = {str(r): accuracy(hyper.sample(r), data.x_test, data.y_test)
                                                  for r in cfg["eval_ratios"]}
    family_bytes = 4 * sum(sum(p.numel() for p in hyper.family.build(r).parameters()) for r in cfg["eval_ratios"])
    metrics = {"base_accuracy": base_acc, "accuracy": accs, **extra, "tv_before": tv_before, "tv_after": tv_after,
               "hyper_bytes": hyper.num_bytes(), "family_bytes": family_bytes,
               "widths": {str(r): list(hyper.family.widths(r)) for r in cfg["eval_ratios"]},
               "seconds_base": t_base, "seconds_fit": t_fit,
               "history": [h for h in fit["history"] if h["step"] % 50 == 0]}
    save_hyper(hyper, out / "hyper.safetensors")
    with atomic_write(out / "config.json") as tmp:
        Path(tmp).write_text(json.dumps(cfg, indent=2))
    with atomic_write(out / "metrics.json") as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=2))
    with atomic_write(out / "README.md") as tmp:
        Path(tmp).write_text(_card(cfg, metrics, hyper))
    plot_run(metrics, fit["history"], out, title=f"{hyper.family.name} on {cfg['dataset']}")
    return metrics


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _broadcast(tensors: dict[str, torch.Tensor]) -> None:
    """Rank 0's values into every rank's tensors (in place); nothing without a process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for name in sorted(tensors):
        dist.broadcast(tensors[name].data, 0)


def save_hyper(hyper: NeuMeta, path: str | Path) -> Path:
    """NeuMeta weights as safetensors; its config in metadata ``wsl_hyper``."""
    state = {k: v.detach().contiguous() for k, v in hyper.state_dict().items()}
    atomic_save_safetensors(state, Path(path), {"wsl_hyper": json.dumps(hyper.config_dict(), sort_keys=True)})
    return Path(path)


def load_hyper(path: str | Path) -> NeuMeta:
    """A NeuMeta from a run directory, its ``hyper.safetensors``, or an ``hf://ORG/NAME`` model repository."""
    p = Path(local_path(path))
    if p.is_dir():
        p = p / "hyper.safetensors"
    if not p.is_file():
        raise CheckpointError(f"hyper: {p} not found; point at a run directory written by 'wsl hyper train'")
    with safe_open(str(p), framework="pt") as fh:
        meta = fh.metadata() or {}
    if "wsl_hyper" not in meta:
        raise CheckpointError(f"hyper: {p} has no 'wsl_hyper' metadata; not a NeuMeta file")
    hyper = NeuMeta(NeuMetaConfig(**json.loads(meta["wsl_hyper"])))
    try:
        hyper.load_state_dict(load_file(str(p)))
    except RuntimeError as exc:
        raise CheckpointError(f"hyper: {p} does not match its config ({str(exc).splitlines()[0]})") from None
    return hyper.eval()


def _card(cfg: dict[str, Any], m: dict[str, Any], hyper: NeuMeta) -> str:
    rows = "\n".join(f"| {r} | {m['widths'][r]} | {a:.4f} |" for r, a in m["accuracy"].items())
    return (f"# NeuMeta hypernetwork for {hyper.family.name} on {cfg['dataset']}\n\n"
            f"One implicit network generating the whole {hyper.family.name} at any width ratio "
            f"(wsl.hyper). Base accuracy {m['base_accuracy']:.4f}; smoothing {cfg['smooth']} "
            f"(total variation {m['tv_before']:.1f} -> {m['tv_after']:.1f}).\n\n"
            f"| ratio | widths | test accuracy |\n|---|---|---|\n{rows}\n\n"
            f"Hypernetwork {m['hyper_bytes']} bytes; the {len(m['accuracy'])} networks it replaces "
            f"{m['family_bytes']} bytes.\n\nSample: `wsl hyper sample RUN --width 0.5 -o net.safetensors`\n")

"""``wsl train CONFIG.yaml [key=value ...] [--resume] [--output DIR]``.

Trains a generalization predictor (see :mod:`wsl.train.loop`). Under
``torchrun --nproc_per_node=N -m wsl train ...`` it trains with
DistributedDataParallel. A config whose ``model.name`` is a baseline
(``statnn_gbt``, ``statnn_linear``, ``hparams_gbt``) fits that baseline instead
and writes the same ``metrics.json`` / ``test_scatter.png``. ``task:
inr_classification`` / ``inr_editing`` configs train INR meta-models
(:mod:`wsl.train.inr_trainers`) or run the INR baselines (:mod:`wsl.tasks.inr_baselines`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train a meta-model (generalization predictor) from a YAML config",
                       description="Train a meta-model on a model zoo. Overrides: nested keys with dots, "
                       "e.g. model.hidden=64 optim.lr=1e-3 train.epochs=5.")
    p.add_argument("config", help="experiment YAML (see configs/generalization/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoints/last")
    p.add_argument("-o", "--output", metavar="DIR", help="run directory (default: the config's output, "
                   "or runs/<config name>)")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from wsl.tasks.baselines import BASELINES
    from wsl.train.config import load_config
    from wsl.train.config_files import check_zoo_path

    cfg = load_config(args.config, args.overrides)
    check_zoo_path(cfg.data.zoo, args.config)
    if args.output:
        cfg.output = args.output
    if cfg.train.threads:  # an entry point: the library never changes the process's thread count
        import torch

        torch.set_num_threads(cfg.train.threads)
    if cfg.task != "generalization":
        from wsl.cli.inr_cmd import inr_baseline_names, run_inr_baseline

        if cfg.model.name in inr_baseline_names(cfg.task):
            return run_inr_baseline(cfg)
    elif cfg.model.name in BASELINES:
        return _run_baseline(cfg)
    from wsl.train.run import train

    m = train(cfg, cfg.output, resume=args.resume)
    if cfg.task != "generalization":
        from wsl.cli.inr_cmd import print_inr_result

        return print_inr_result(cfg, m)
    if m.get("world_size", 1) == 1 or int(__import__("os").environ.get("RANK", "0")) == 0:
        print(f"{cfg.model.name}: val tau {_f(m['val'].get('tau'))}, test tau {_f(m['test'].get('tau'))}, "
              f"test r2 {_f(m['test'].get('r2'))}, {m['wall_time_s']:.0f}s -> {cfg.output}")
    return 0


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _run_baseline(cfg: Any) -> int:
    import time

    from wsl import load_zoo
    from wsl.errors import ConfigError
    from wsl.io import atomic_open, local_path
    from wsl.tasks.baselines import fit_baseline
    from wsl.tasks.metrics import to_json
    from wsl.train.plots import scatter_plot

    if cfg.model.params:
        raise ConfigError(f"baseline {cfg.model.name!r} takes no model arguments, got {sorted(cfg.model.params)}")
    dc = cfg.data
    t0 = time.perf_counter()
    zoo = load_zoo(local_path(dc.zoo, repo_type="dataset"), verify=dc.verify)
    if dc.arch is not None:
        zoo = zoo.filter(arch=dc.arch)
    layout = dc.stats_layout
    res = fit_baseline(cfg.model.name, zoo, cfg.train.seed, target=dc.target, checkpoints=dc.checkpoints,
                       train_checkpoints=dc.train_checkpoints, probes=cfg.probes.num, probe_seed=cfg.probes.seed,
                       probe_kind=cfg.probes.kind, probe_invert=cfg.probes.invert,
                       invert_steps=cfg.probes.invert_steps, invert_tv=cfg.probes.invert_tv,
                       layout=layout, splits=(dc.train_split, dc.val_split, dc.test_split), return_predictions=True)
    preds = res.pop("predictions")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    res.update(wall_time_s=time.perf_counter() - t0, model=cfg.model.name, config=cfg.to_dict())
    with atomic_open(out / "metrics.json", "w", encoding="utf-8") as fh:
        json.dump(to_json(res), fh, indent=1)
    with atomic_open(out / "predictions.json", "w", encoding="utf-8") as fh:  # for ensembles with learned models
        json.dump({role: {"predicted": [float(v) for v in pr], "true": [float(v) for v in tr]}
                   for role, (pr, tr) in preds.items()}, fh)
    p, t = preds["test"]
    scatter_plot(p, t, out / "test_scatter.png", title=f"{cfg.model.name} on {zoo.name} (test)",
                 target=dc.target.replace("_", " "), metrics=res["test"])
    print(f"{cfg.model.name}: val tau {res['val'].get('tau', float('nan')):.4f}, test tau "
          f"{res['test'].get('tau', float('nan')):.4f}, test r2 {res['test'].get('r2', float('nan')):.4f} -> {out}")
    return 0

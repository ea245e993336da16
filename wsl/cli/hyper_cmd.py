"""``wsl hyper train CONFIG -o RUN`` and ``wsl hyper sample RUN --width R -o net.safetensors`` (NeuMeta)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wsl.cli.common import print_json
from wsl.errors import WslError


def register(sub: Any) -> None:
    p = sub.add_parser("hyper", help="NeuMeta hypernetworks: one network generating a model at any width",
                       description="Train a NeuMeta hypernetwork on a base network, or sample a network "
                       "of any width from a trained one.")
    hs = p.add_subparsers(dest="hyper_cmd", required=True)
    t = hs.add_parser("train", help="fit NeuMeta from a YAML config (trains the base first if none is given)")
    t.add_argument("config", help="YAML config (see wsl/hyper/run.py)")
    t.add_argument("-o", "--output", default=None, help="run directory (default runs/hyper/<config stem>)")
    t.add_argument("--steps", type=int, default=None, help="override train.steps")
    t.add_argument("--no-smooth", action="store_true", help="skip the smoothing permutation")
    t.add_argument("--resume", action="store_true", help="continue from RUN/checkpoint (same config)")
    t.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    t.set_defaults(func=run_train)
    s = hs.add_parser("sample", help="generate a network at a width ratio from a run directory")
    s.add_argument("run", help="run directory written by 'wsl hyper train', its hyper.safetensors, or hf://ORG/NAME")
    s.add_argument("--width", type=float, default=1.0, help="global width ratio in (0, 4] (default 1)")
    s.add_argument("-o", "--output", required=True, help="output .safetensors (carries the architecture)")
    s.add_argument("--samples", type=int, default=1, metavar="K",
                   help="average the weights of K generations with jittered unit positions (K times the cost; "
                   "default 1: one deterministic generation at the coordinates' centres)")
    s.add_argument("--generated-statistics", action="store_true",
                   help="BatchNorm: keep the generated running statistics (hypernetworks trained with "
                   "model.generate_statistics) instead of recomputing them on the run's training inputs")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=run_sample)


def run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from wsl.hyper.run import resolve_config, run
    from wsl.io.yaml_file import read_yaml_mapping
    from wsl.train import distributed as D

    cfg = resolve_config(read_yaml_mapping(args.config, what="hyper config"))
    if args.steps is not None:
        cfg["train"]["steps"] = int(args.steps)
    if args.no_smooth:
        cfg["smooth"] = False
    out = Path(args.output) if args.output else Path("runs") / "hyper" / Path(args.config).stem
    info = D.setup("cpu")  # torchrun: gloo process group; the widths of each step are dealt across ranks
    try:
        bar = tqdm(total=cfg["train"]["steps"], desc="NeuMeta", unit="step", disable=args.json or not info.is_main)

        def progress(step: int, rec: dict[str, float]) -> None:
            bar.update(1)
            if step % 25 == 0:
                bar.set_postfix(task=f"{rec['task']:.3f}", rec=f"{rec['rec']:.3f}", ratio=f"{rec['ratio']:.2f}")

        if args.resume:
            import json

            state = out / "checkpoint" / "state.json"
            if state.is_file():
                bar.update(int(json.loads(state.read_text())["step"]))
        metrics = run(cfg, out, progress, on_phase=lambda s: bar.set_description(f"NeuMeta [{s}]"),
                      resume=args.resume)
        bar.close()
        D.barrier(info)
    finally:
        D.cleanup()
    if not info.is_main:
        return 0
    if args.json:
        print_json({k: v for k, v in metrics.items() if k != "history"} | {"run": str(out)})
    else:
        accs = ", ".join(f"{r}: {a:.3f}" for r, a in metrics["accuracy"].items())
        print(f"base accuracy {metrics['base_accuracy']:.3f}; NeuMeta accuracy by width {accs}")
        print(f"total variation {metrics['tv_before']:.1f} -> {metrics['tv_after']:.1f}; "
              f"fit {metrics['seconds_fit']:.0f} s; wrote {out}")
    return 0


def run_sample(args: argparse.Namespace) -> int:
    from wsl.hyper.run import load_hyper
    from wsl.io import save_module

    out = Path(args.output)
    if out.suffix.lower() != ".safetensors":
        raise WslError(f"-o {out}: the sampled network is written as safetensors; name it *.safetensors")
    from wsl.io import local_path

    hyper = load_hyper(args.run)
    calib = None
    if args.generated_statistics and not hyper.config.generate_statistics:
        raise WslError(f"{args.run}: --generated-statistics: this hypernetwork does not generate BatchNorm "
                       "statistics (train it with model.generate_statistics: true)")
    if hyper.has_batchnorm and not args.generated_statistics:
        calib = _calibration(Path(local_path(args.run)))
    module = hyper.sample(args.width, calib, samples=args.samples)
    save_module(module, out)
    widths = dict(zip(hyper.family.knobs, hyper.family.widths(args.width)))
    n = sum(p.numel() for p in module.parameters())
    if args.json:
        print_json({"output": str(out), "width": args.width, "widths": widths, "parameters": n})
    else:
        print(f"sampled {hyper.family.name} at width {args.width} ({widths}, {n} parameters); wrote {out}")
    return 0


def _calibration(run: Path) -> Any:
    """Training inputs of the run's data set, to recompute BatchNorm statistics."""
    import json

    from wsl.hyper.run import CALIBRATION
    from wsl.zoo.data import load_dataset

    cfg_path = (run if run.is_dir() else run.parent) / "config.json"
    if not cfg_path.is_file():
        raise WslError(f"{run}: the network has BatchNorm and {cfg_path} (naming the data set whose inputs "
                       "recompute its statistics) is missing")
    return load_dataset(json.loads(cfg_path.read_text())["dataset"]).x_train[:CALIBRATION]

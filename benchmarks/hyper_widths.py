"""Accuracy vs width ratio: NeuMeta (with / without smoothing), individually trained nets, structured pruning.

    OMP_NUM_THREADS=1 python benchmarks/hyper_widths.py [--arch digits_cnn|mnist1d_mlp|digits_resnet] [--steps N]

The NeuMeta recipe (base, model, fit) is the shipped config ``configs/hyper/<arch>.yaml``, so
``wsl hyper train configs/hyper/<arch>.yaml`` reproduces the smoothed column; ``--steps`` overrides
its ``train.steps``. Writes benchmarks/results/hyper_widths[_ARCH][_seedN].{json,md,png}; one thread.
``--seed N`` (default 0) sets the config's seed (base, NeuMeta fit, individual nets); ``--summary 0 1 2``
reads the finished seeds' JSON files and writes the mean ± std table ``hyper_widths[_ARCH]_seeds.md``.
BatchNorm networks (digits_resnet): NeuMeta samples and pruned networks get their
running statistics recomputed on the first 1,024 training inputs.
Budgets: the base and every individually trained net get ``--base-steps`` Adam
steps; the pruning fine-tune gets ``--finetune-steps`` (same optimiser, lr/3).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from wsl.archs.width import WidthFamily
from wsl.hyper.prune import prune
from wsl.hyper.neumeta import recalibrate_batchnorm
from wsl.hyper.run import CALIBRATION, RATIOS, resolve_config, run
from wsl.hyper.train import accuracy, train_classifier
from wsl.io.yaml_file import read_yaml_mapping
from wsl.zoo.data import load_dataset

ARCHS = ("digits_cnn", "mnist1d_mlp", "digits_resnet")
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "hyper"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arch", default="digits_cnn", choices=ARCHS)
    ap.add_argument("--steps", type=int, default=None, help="NeuMeta fit steps (default: the config's)")
    ap.add_argument("--finetune-steps", type=int, default=300)
    ap.add_argument("--variants", default="smooth,plain", help="NeuMeta fits to run: smooth, plain or both")
    ap.add_argument("--reuse", action="store_true",
                    help="read a variant's finished run directory (metrics.json) instead of fitting it again")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--seed", type=int, default=0, help="the config's seed (base, fit, individual nets)")
    ap.add_argument("--summary", type=int, nargs="+", help="only tabulate these finished seeds (mean ± std)")
    args = ap.parse_args()
    if args.summary:
        summarize(args)
        return
    torch.set_num_threads(1)
    raw = read_yaml_mapping(CONFIGS / f"{args.arch}.yaml", what="hyper config")
    if args.steps is not None:
        raw.setdefault("train", {})["steps"] = args.steps
    raw["eval_ratios"] = list(RATIOS)
    raw["seed"] = args.seed
    dataset, base_steps = raw["dataset"], int(raw["base"]["steps"])
    data = load_dataset(dataset)
    out = Path(args.out)
    suffix = _suffix(args.arch, args.seed)
    runs = out / f"hyper_widths{suffix}_runs"
    res: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or set(variants) - {"smooth", "plain"}:
        ap.error("--variants: a comma-separated subset of smooth,plain")
    for smooth_on in [v == "smooth" for v in variants]:
        cfg = resolve_config({**raw, "smooth": smooth_on})
        rd = runs / ("smooth" if smooth_on else "plain")
        if args.reuse and (rd / "metrics.json").is_file():
            m = json.loads((rd / "metrics.json").read_text())
        else:
            m = run(cfg, rd)
        res["neumeta_smooth" if smooth_on else "neumeta_plain"] = m["accuracy"]
        if "accuracy_generated_statistics" in m:  # BatchNorm: generated running statistics instead of recomputed
            res["neumeta_smooth_genstats" if smooth_on else "neumeta_plain_genstats"] = m["accuracy_generated_statistics"]
        res["base"] = {"1.0": m["base_accuracy"]}
        res.setdefault("_meta", {}).update({"tv_before": m["tv_before"], "tv_after" if smooth_on else "tv_plain":
                                            m["tv_after"], "hyper_bytes": m["hyper_bytes"],
                                            "family_bytes": m["family_bytes"],
                                            f"fit_seconds_{'smooth' if smooth_on else 'plain'}": m["seconds_fit"]})
        print(args.arch, "smooth" if smooth_on else "plain", m["accuracy"], flush=True)
    from wsl.io import load_model
    base, _ = load_model(runs / variants[0] / "base.safetensors")
    fam = WidthFamily.from_module(base)
    res["individual"], res["prune"], res["prune_finetune"] = {}, {}, {}
    for r in RATIOS:
        torch.manual_seed(args.seed)
        net = train_classifier(fam.build(r), data.x_train, data.y_train, steps=base_steps, lr=3e-3, seed=args.seed)
        res["individual"][str(r)] = accuracy(net, data.x_test, data.y_test)
        p = prune(base, r)
        if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in p.modules()):
            recalibrate_batchnorm(p, data.x_train[:CALIBRATION])  # as NeuMeta's samples get
        res["prune"][str(r)] = accuracy(p, data.x_test, data.y_test)
        p = train_classifier(p, data.x_train, data.y_train, steps=args.finetune_steps, lr=1e-3, seed=args.seed + 1)
        res["prune_finetune"][str(r)] = accuracy(p, data.x_test, data.y_test)
        print(r, {k: v.get(str(r)) for k, v in res.items() if k != "_meta"}, flush=True)
    res["_meta"].update({"arch": args.arch, "dataset": dataset, "config": raw, "base_steps": base_steps,
                         "finetune_steps": args.finetune_steps, "seconds": time.perf_counter() - t0,
                         "widths": {str(r): list(fam.widths(r)) for r in RATIOS}, "variants": variants})
    out.mkdir(parents=True, exist_ok=True)
    (out / f"hyper_widths{suffix}.json").write_text(json.dumps(res, indent=2))
    cols = [c for c in ("neumeta_smooth", "neumeta_smooth_genstats", "neumeta_plain", "neumeta_plain_genstats")
            if c in res] + ["individual", "prune", "prune_finetune", "base"]
    lines = [f"| ratio | widths | {' | '.join(cols)} |", "|" + "---|" * (len(cols) + 2)]
    for r in RATIOS:
        cells = [f"{res[c][str(r)]:.3f}" if str(r) in res[c] else "" for c in cols]
        lines.append(f"| {r} | {res['_meta']['widths'][str(r)]} | {' | '.join(cells)} |")
    (out / f"hyper_widths{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("warning: matplotlib not installed; no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in cols[:-1]:
        ax.plot(RATIOS, [res[c][str(r)] for r in RATIOS], marker="o", label=c)
    ax.scatter([1.0], [res["base"]["1.0"]], marker="*", s=120, color="k", label="base", zorder=5)
    ax.set_xlabel("width ratio")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{args.arch}: accuracy vs width")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"hyper_widths{suffix}.png", dpi=120)


def _suffix(arch: str, seed: int) -> str:
    return ("" if arch == "digits_cnn" else f"_{arch}") + ("" if seed == 0 else f"_seed{seed}")


def summarize(args: argparse.Namespace) -> None:
    """Mean ± std (ddof 1) over the finished seeds of ``--arch``, per method and width ratio."""
    import numpy as np

    out = Path(args.out)
    runs = []
    for s in args.summary:
        f = out / f"hyper_widths{_suffix(args.arch, s)}.json"
        if not f.is_file():
            raise SystemExit(f"missing {f}: run  python benchmarks/hyper_widths.py --arch {args.arch} --seed {s}")
        runs.append(json.loads(f.read_text()))
    cols = [c for c in ("neumeta_smooth", "neumeta_plain", "individual", "prune", "prune_finetune")
            if all(c in r for r in runs)]
    lines = [f"{args.arch}: test accuracy, mean ± std over seeds {' '.join(map(str, args.summary))}", "",
             f"| ratio | {' | '.join(cols)} |", "|" + "---|" * (len(cols) + 1)]
    for r in RATIOS:
        cells = []
        for c in cols:
            v = np.array([run[c][str(r)] for run in runs])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}")
        lines.append(f"| {r} | {' | '.join(cells)} |")
    base = np.array([run["base"]["1.0"] for run in runs])
    lines += ["", f"base (full width, trained directly): {base.mean():.3f} ± {base.std(ddof=1) if len(base) > 1 else 0:.3f}"]
    path = out / f"hyper_widths{_suffix(args.arch, 0)}_seeds.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Reproduce the README's INR-classification table: accuracy (3 seeds) and training throughput per model.

For each zoo, model and seed this runs ``wsl train configs/inr/<zoo>_cls_<model>.yaml train.seed=<seed>
data.max_train=<N> train.epochs=<E>`` (in this process, on one thread; finished runs are reused, so
an interrupted table resumes), then prints test accuracy as mean ± std over the seeds, the training
throughput (INRs per second of training; StatNN + GBT: INRs per second of fitting) and the wall time.

    python benchmarks/inr_classification.py                       # both zoos, every model, seeds 0 1 2
    python benchmarks/inr_classification.py --zoos digits --models np,render_cnn --seeds 0
    python benchmarks/inr_classification.py --collect             # only tabulate finished runs

Zoos (from the repository root; about 3 + 4 minutes on one thread):

    wsl zoo generate zoos/digits-siren.yaml  -o zoos-out/digits-siren    # 1,797 images x 2 fits
    wsl zoo generate zoos/mnist1d-siren.yaml -o zoos-out/mnist1d-siren   # 5,000 sequences x 3 fits
    wsl zoo generate zoos/digits-siren-shared.yaml -o zoos-out/digits-siren-shared   # the ablation: one init

Sizes (chosen so the whole table, 2 zoos x 8 models x 3 seeds, runs in about 30 minutes on one
thread): every model trains on the same random ``--max-train`` INRs of the zoo's train split (default
1,600; all fits of an image stay in one split) and is evaluated on the full val/test splits;
``--epochs`` per model family below.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from inr_runs import cached_run  # noqa: E402 (this directory)
os.environ.setdefault("OMP_NUM_THREADS", "1")
MODELS = ["statnn_gbt", "flat_mlp", "flat_mlp_noaug", "np", "hnp", "nft", "nggnn", "ngt", "render_cnn"]
LABELS = {"statnn_gbt": "StatNN + gradient boosting", "flat_mlp": "MLP on flattened weights",
          "flat_mlp_noaug": "MLP on flattened weights, no augmentation", "np_noaug": "NP, no augmentation",
          "np_nosign": "NP, no sign-flip augmentation", "np": "NP (DWSNets / NFN-NP)", "hnp": "HNP (NFN-HNP)", "nft": "NFT", "nggnn": "NG-GNN", "ngt": "NG-T",
          "render_cnn": "render, then CNN (reference)"}
EPOCHS = {"flat_mlp": 10, "flat_mlp_noaug": 10, "np_noaug": 10, "np_nosign": 10, "np": 10, "hnp": 10, "nft": 8, "nggnn": 4, "ngt": 4, "render_cnn": 10}
GRAPH = {"nggnn": ["model.hidden=16", "model.num_layers=2"], "ngt": ["model.hidden=16", "model.num_layers=2"]}
ZOOS = {"digits": "zoos-out/digits-siren", "mnist1d": "zoos-out/mnist1d-siren",
        "digits-shared": "zoos-out/digits-siren-shared"}
CONFIG_ZOO = {"digits-shared": "digits"}  # the ablation zoo reads the digits configs (data.zoo overridden)
NOAUG = ["augment.permute=false", "augment.sign_flip=false"]
VARIANTS = {"flat_mlp_noaug": ("flat_mlp", NOAUG), "np_noaug": ("np", NOAUG), "np_nosign": ("np", ["augment.sign_flip=false"])}


def run_one(zoo: str, model: str, seed: int, args: argparse.Namespace) -> dict | None:
    out = Path(args.runs) / zoo / model / f"seed{seed}"
    base, extra = VARIANTS.get(model, (model, []))
    cmd = ["train", str(REPO / "configs" / "inr" / f"{CONFIG_ZOO.get(zoo, zoo)}_cls_{base}.yaml"), *extra,
           f"train.seed={seed}", f"data.max_train={args.max_train}", "train.progress=false", "train.threads=1",
           f"data.zoo={args.zoo_dir[zoo]}", "-o", str(out)]
    if model in EPOCHS:
        cmd.append(f"train.epochs={args.epochs or EPOCHS[model]}")
    cmd += GRAPH.get(model, [])
    return cached_run(cmd, out, f"{zoo:8s} {model:11s} seed {seed}", args.collect)


def fmt(vals: list[float], scale: float = 100.0) -> str:
    if not vals:
        return "-"
    a = np.asarray(vals) * scale
    return f"{a.mean():.1f} ± {a.std(ddof=1):.1f}" if len(a) > 1 else f"{a.mean():.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoos", default="digits,mnist1d,digits-shared")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-train", type=int, default=1600, help="training INRs per run (default 1600)")
    p.add_argument("--epochs", type=int, help="override every learned model's epochs")
    p.add_argument("--runs", default=str(REPO / "runs" / "inr_classification"))
    p.add_argument("--collect", action="store_true", help="only tabulate finished runs")
    p.add_argument("--json", help="also write the table as JSON here")
    args = p.parse_args()
    args.zoo_dir = {z: str(REPO / d) for z, d in ZOOS.items()}
    zoos, models = args.zoos.split(","), args.models.split(",")
    for z in zoos:
        if not Path(args.zoo_dir[z]).is_dir() and not args.collect:
            print(f"missing zoo {args.zoo_dir[z]}: wsl zoo generate zoos/{Path(ZOOS[z]).name}.yaml -o {ZOOS[z]}")
            return 2
    t0, c0 = time.perf_counter(), time.process_time()
    table: dict[str, dict[str, dict]] = {}
    for z in zoos:
        for m in models:
            runs = [r for r in (run_one(z, m, s, args) for s in args.seeds) if r is not None]
            table.setdefault(z, {})[m] = {
                "accuracy": [r["test"]["accuracy"] for r in runs], "val_accuracy": [r["val"]["accuracy"] for r in runs],
                "models_per_s": [r["models_per_s"] for r in runs if r.get("models_per_s")],
                "wall_s": [r["wall_time_s"] for r in runs], "n_train": runs[0].get("n_train") if runs else None,
                "n_test": runs[0]["test"]["n"] if runs else None,
                "epochs": runs[0]["config"]["train"]["epochs"] if runs and m in EPOCHS else None}
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    for z in zoos:
        first = next((v for v in table[z].values() if v["n_train"]), {})
        name = {"digits-shared": "digits-siren-shared (shared initialisation)"}.get(z, f"{z}-siren")
        print(f"\n{name}: {first.get('n_train')} training INRs, {first.get('n_test')} test INRs, "
              f"seeds {' '.join(map(str, args.seeds))}\n")
        print("| model | test accuracy (%) | val accuracy (%) | epochs | train models/s | wall s / run |")
        print("|---|---|---|---|---|---|")
        for m in models:
            r = table[z][m]
            rate = f"{np.mean(r['models_per_s']):.0f}" if r["models_per_s"] else "-"
            wall = f"{np.mean(r['wall_s']):.0f}" if r["wall_s"] else "-"
            print(f"| {LABELS.get(m, m)} | {fmt(r['accuracy'])} | {fmt(r['val_accuracy'])} | "
                  f"{r['epochs'] or '-'} | {rate} | {wall} |")
    print(f"\ntotal {total / 60:.1f} min wall, {cpu / 60:.1f} min CPU of this process (one thread; runs reused from "
          f"{args.runs} are not re-timed)")
    if args.json:
        Path(args.json).write_text(json.dumps({"table": table, "seeds": args.seeds, "max_train": args.max_train,
                                               "total_s": total, "cpu_s": cpu}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

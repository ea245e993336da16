"""Reproduce the README's INR-editing table: test render MSE per edit and model (3 seeds), and the figure.

For each edit, model and seed this runs ``wsl train configs/inr/digits_edit_<model>.yaml inr.edit=<edit>
train.seed=<seed> data.max_train=<N> train.epochs=<E>`` (in this process, on one thread; finished runs
are reused), prints the test MSE of the edited INRs' renders against the edited images (mean ± std over
seeds; ``identity`` = no edit, ``output_affine`` = one affine map ``a f + b`` of every INR's output fitted on
the training split, ``gd_fit`` = 100 Adam steps on each test INR's own weights) with the
training throughput, and draws before / after / target renders of test INRs for every edit.

    python benchmarks/inr_editing.py                              # 4 edits x 9 models x seeds 0 1 2
    python benchmarks/inr_editing.py --edits dilate --models identity,np --seeds 0
    python benchmarks/inr_editing.py --collect                    # only tabulate finished runs

Zoo (from the repository root, about 3 minutes): ``wsl zoo generate zoos/digits-siren.yaml -o zoos-out/digits-siren``.
Sizes: every learned model trains on the same random ``--max-train`` INRs (default 800) of the train split
for ``EPOCHS`` epochs and is evaluated on the full val/test splits. Pixel values are in [-1, 1], so MSEs are
4x those of [0, 1] images.
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
EDITS = ["dilate", "erode", "contrast", "gaussian_blur"]
MODELS = ["identity", "output_affine", "gd_fit", "flat_mlp", "np", "hnp", "nft", "nggnn", "ngt"]
LABELS = {"identity": "no edit (identity)", "output_affine": "one affine map of the output (a f + b)",
          "gd_fit": "gradient-descent fit (100 steps)", "flat_mlp": "MLP on flattened weights", "np": "NP",
          "hnp": "HNP", "nft": "NFT", "nggnn": "NG-GNN", "ngt": "NG-T"}
EPOCHS = {"flat_mlp": 8, "np": 8, "hnp": 8, "nft": 6, "nggnn": 3, "ngt": 3}
GRAPH = {"nggnn": ["model.hidden=16", "model.num_layers=2"], "ngt": ["model.hidden=16", "model.num_layers=2"]}


def run_one(edit: str, model: str, seed: int, args: argparse.Namespace) -> dict | None:
    out = Path(args.runs) / edit / model / f"seed{seed}"
    cmd = ["train", str(REPO / "configs" / "inr" / f"digits_edit_{model}.yaml"),
           f"inr.edit={edit}", f"train.seed={seed}", f"data.max_train={args.max_train}", "train.progress=false",
           "train.threads=1", f"data.zoo={args.zoo}", "-o", str(out)]
    if model in EPOCHS:
        cmd.append(f"train.epochs={args.epochs or EPOCHS[model]}")
    cmd += GRAPH.get(model, [])
    return cached_run(cmd, out, f"{edit:13s} {model:9s} seed {seed}", args.collect)


def _num(v: float) -> str:
    return f"{v:.4f}" if v >= 1e-3 else f"{v:.1e}"


def fmt(vals: list[float]) -> str:
    if not vals:
        return "-"
    a = np.asarray(vals)
    return f"{_num(a.mean())} ± {_num(a.std(ddof=1))}" if len(a) > 1 else _num(a.mean())


def figure(path: Path, model: str, args: argparse.Namespace, count: int = 5) -> None:
    """Renders of ``count`` test INRs: the INR, then per edit the meta-model's edit and the target."""
    import torch

    sys.path.insert(0, str(REPO))
    from wsl.tasks.inr import Renderer, zoo_shape
    from wsl.tasks.inr_edits import apply_edit
    from wsl.tasks.inr_plots import edit_grid
    from wsl.train.inr_editor import load_inr_model
    from wsl.zoo import load_zoo

    torch.set_num_threads(1)
    zoo = load_zoo(args.zoo)
    test = zoo.split("test").latest()
    pick = np.random.default_rng(0).choice(len(test), count, replace=False)
    view = test[np.sort(pick)]
    rend = Renderer(zoo.architectures[view[0].arch_id]["arch"], zoo_shape(zoo))
    raw = view.stacked()
    with torch.no_grad():
        before = rend(raw)
        cols = {"INR": before}
        for edit in args.edits.split(","):
            run = Path(args.runs) / edit / model / f"seed{args.seeds[0]}"
            if not (run / "inr_model").is_dir():
                continue
            cols[f"{model}: {edit}"] = rend(load_inr_model(run).edit(raw))
            cols[f"target: {edit}"] = apply_edit(edit, before)
    labels = [f"label {m.metadata['label']}" for m in view]
    edit_grid(cols, path, row_labels=labels, title=f"digits-siren test INRs: {LABELS.get(model, model)} edits "
              "(weights in, weights out) vs. targets")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--edits", default=",".join(EDITS))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-train", type=int, default=800)
    p.add_argument("--epochs", type=int, help="override every learned model's epochs")
    p.add_argument("--zoo", default=str(REPO / "zoos-out" / "digits-siren"))
    p.add_argument("--runs", default=str(REPO / "runs" / "inr_editing"))
    p.add_argument("--figure", default=str(REPO / "benchmarks" / "results" / "inr_editing.png"))
    p.add_argument("--figure-model", default=None, help="model drawn in the figure (default: lowest mean MSE)")
    p.add_argument("--collect", action="store_true")
    p.add_argument("--json", help="also write the table as JSON here")
    args = p.parse_args()
    if not Path(args.zoo).is_dir() and not args.collect:
        print(f"missing zoo {args.zoo}: wsl zoo generate zoos/digits-siren.yaml -o zoos-out/digits-siren")
        return 2
    edits, models = args.edits.split(","), args.models.split(",")
    t0, c0 = time.perf_counter(), time.process_time()
    table: dict[str, dict[str, dict]] = {}
    for e in edits:
        for m in models:
            runs = [r for r in (run_one(e, m, s, args) for s in args.seeds) if r is not None]
            table.setdefault(m, {})[e] = {"mse": [r["test"]["mse"] for r in runs],
                                          "identity": [r["test"]["identity_mse"] for r in runs],
                                          "models_per_s": [r["models_per_s"] for r in runs if r.get("models_per_s")],
                                          "n_train": runs[0].get("n_train") if runs else None,
                                          "n_test": runs[0]["test"]["n"] if runs else None}
    learned = [m for m in models if m in EPOCHS]  # the references (identity, output_affine, gd_fit) read every row
    first = next((v for m in learned or models for v in table[m].values() if v["n_train"]), {})
    print(f"\ndigits-siren editing: learned models train on {first.get('n_train')} INRs, {first.get('n_test')} test INRs, seeds "
          f"{' '.join(map(str, args.seeds))}; test MSE of the edited render vs. the edited image (lower is better)\n")
    print("| model | " + " | ".join(edits) + " | train models/s |")
    print("|---|" + "---|" * len(edits) + "---|")
    for m in models:
        rates = [v for e in edits for v in table[m][e]["models_per_s"]]
        rate = f"{np.mean(rates):.0f}" if rates else "-"
        print(f"| {LABELS.get(m, m)} | " + " | ".join(fmt(table[m][e]["mse"]) for e in edits) + f" | {rate} |")
    learned = [m for m in models if m in EPOCHS and all(table[m][e]["mse"] for e in edits)]
    fig_model = args.figure_model or (min(learned, key=lambda m: np.mean([np.mean(table[m][e]["mse"]) for e in edits]))
                                      if learned else None)
    if fig_model:
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        figure(Path(args.figure), fig_model, args)
        print(f"\nfigure: {args.figure} ({LABELS.get(fig_model, fig_model)}, seed {args.seeds[0]})")
    print(f"total {(time.perf_counter() - t0) / 60:.1f} min wall, {(time.process_time() - c0) / 60:.1f} min CPU of this "
          f"process (one thread; runs reused from {args.runs} are not re-timed)")
    if args.json:
        Path(args.json).write_text(json.dumps({"table": table, "seeds": args.seeds, "max_train": args.max_train},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

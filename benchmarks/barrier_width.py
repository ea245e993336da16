"""Loss barriers between independently trained networks, before and after weight matching, across widths.

For each width, trains ``2 * pairs`` networks that differ only in their seed
(initialisation and data order) with wsl's vectorized zoo generator, then
for each pair measures the test-loss and test-error barrier along the straight
line between the two (11 points), before alignment and after weight matching
(Git Re-Basin's question: does the barrier after alignment shrink toward zero
as width grows?). Two families: MLPs ``40 -> w -> w -> 10`` on MNIST-1D and
small CNNs ``3 x Conv(w, 3x3, stride 2)`` on the 8x8 digits.

    python benchmarks/barrier_width.py                       # writes benchmarks/results/barrier_width.{json,md,png}
    python benchmarks/barrier_width.py --pairs 2 --quick     # two widths per family, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from wsl.align import barrier, weight_matching
from wsl.space import WeightSpace
from wsl.zoo import load_zoo
from wsl.zoo.data import load_dataset
from wsl.zoo.generate import generate
from wsl.zoo.recipes import parse_recipe

FAMILIES = {
    "mlp-mnist1d": {"dataset": "mnist1d", "widths": [16, 32, 64, 128, 256, 512], "batch": 64,
                    "arch": lambda w: {"type": "mlp", "hidden": [w, w]}},
    "cnn-digits": {"dataset": "digits", "widths": [8, 16, 32, 64, 128], "batch": 32,
                   "arch": lambda w: {"type": "small_cnn", "channels": [w, w, w], "kernel_size": 3, "stride": 2}},
}


def recipe(family: str, width: int, n: int, epochs: int) -> Any:
    f = FAMILIES[family]
    return parse_recipe({
        "name": f"{family}-w{width}", "version": "1.0", "task": "classification",
        "dataset": {"name": f["dataset"]}, "architecture": f["arch"](width),
        "hparams": {"activation": ["relu"], "optimizer": ["adam"], "lr": [1.0e-3], "weight_decay": [0.0],
                    "dropout": [0.0], "w_init": ["normal"], "init_std": [1 / math.sqrt(width)],
                    "train_fraction": [1.0]},
        "training": {"batch_size": f["batch"], "epochs": epochs, "checkpoints": [epochs]},
        "generation": {"num_models": n, "models_per_chunk": n, "seed": 0},
        "splits": {"train": 1.0, "val": 0.0, "test": 0.0, "seed": 0},
    }, f"{family}-w{width}")


def pair_barriers(zoo_dir: Path, dataset: str, pairs: int) -> dict[str, Any]:
    data = load_dataset(dataset)
    x, y = data.x_test, data.y_test
    models = list(load_zoo(zoo_dir).latest())

    def loss(net: torch.nn.Module) -> float:
        return float(F.cross_entropy(net(x), y))

    def error(net: torch.nn.Module) -> float:
        return float((net(x).argmax(1) != y).double().mean())

    out: dict[str, list[float]] = {k: [] for k in ("loss_before", "loss_after", "error_before", "error_after",
                                                   "end_error")}
    path_before = path_after = None
    for p in range(pairs):
        a, b = models[2 * p], models[2 * p + 1]
        net = a.module()
        space = WeightSpace.from_module(net)
        sa, sb = a.state_dict(), b.state_dict()
        aligned = weight_matching(sa, sb, space).apply(sb)
        for tag, other in (("before", sb), ("after", aligned)):
            lb = barrier(net, sa, other, loss)
            eb = barrier(net, sa, other, error)
            out[f"loss_{tag}"].append(lb.barrier)
            out[f"error_{tag}"].append(eb.barrier)
            if p == 0:
                if tag == "before":
                    path_before = lb.losses
                else:
                    path_after = lb.losses
        out["end_error"].extend([eb.losses[0], eb.losses[-1]])
    summary = {k: [statistics.mean(v), statistics.pstdev(v)] for k, v in out.items()}
    summary["path_before"], summary["path_after"] = path_before, path_after
    return summary


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for family, rows in results.items():
        ws = [r["width"] for r in rows]
        for tag, style in (("before", "--"), ("after", "-")):
            axes[0].errorbar(ws, [r[f"loss_{tag}"][0] for r in rows], [r[f"loss_{tag}"][1] for r in rows],
                             ls=style, marker="o", capsize=3, label=f"{family}, {tag} matching")
            axes[1].errorbar(ws, [100 * r[f"error_{tag}"][0] for r in rows],
                             [100 * r[f"error_{tag}"][1] for r in rows], ls=style, marker="o", capsize=3,
                             label=f"{family}, {tag} matching")
        widest = rows[-1]
        alphas = [i / 10 for i in range(11)]
        axes[2].plot(alphas, widest["path_before"], "--", label=f"{family} w={widest['width']}, before")
        axes[2].plot(alphas, widest["path_after"], "-", label=f"{family} w={widest['width']}, after")
    for ax, title in zip(axes, ("test-loss barrier", "test-error barrier (points)", "test loss along the path")):
        ax.set_title(title)
        ax.legend(fontsize=7)
    for ax in axes[:2]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width")
    axes[2].set_xlabel("alpha (0: network A, 1: network B)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(results: dict[str, Any]) -> str:
    lines = ["| family | width | loss barrier before | after | error barrier before (pts) | after (pts) | "
             "end-point test error |", "|---|---|---|---|---|---|---|"]
    for family, rows in results.items():
        for r in rows:
            lines.append(f"| {family} | {r['width']} | {r['loss_before'][0]:.3f} ± {r['loss_before'][1]:.3f} | "
                         f"{r['loss_after'][0]:.3f} ± {r['loss_after'][1]:.3f} | "
                         f"{100 * r['error_before'][0]:.1f} ± {100 * r['error_before'][1]:.1f} | "
                         f"{100 * r['error_after'][0]:.1f} ± {100 * r['error_after'][1]:.1f} | "
                         f"{100 * r['end_error'][0]:.1f}% |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=4, help="pairs of networks per width (default 4)")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="the two smallest widths of each family")
    ap.add_argument("--out", default="benchmarks/results/barrier_width", help="output prefix (.json/.md/.png)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # entry point
    results: dict[str, Any] = {}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for family, f in FAMILIES.items():
            rows = []
            for w in f["widths"][:2] if args.quick else f["widths"]:
                zoo = Path(tmp) / f"{family}-{w}"
                generate(recipe(family, w, 2 * args.pairs, args.epochs), zoo, progress=False, device="cpu")
                r = pair_barriers(zoo, f["dataset"], args.pairs)
                r["width"] = w
                rows.append(r)
                print(f"{family} w={w}: loss barrier {r['loss_before'][0]:.3f} -> {r['loss_after'][0]:.3f}, "
                      f"error barrier {100 * r['error_before'][0]:.1f} -> {100 * r['error_after'][0]:.1f} pts "
                      f"(end points {100 * r['end_error'][0]:.1f}% error; {time.time() - t0:.0f} s)", flush=True)
            results[family] = rows
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(table(results) + "\n")
    plot(results, out.with_suffix(".png"))
    print(table(results))


if __name__ == "__main__":
    main()

"""Training a new digits CNN in the zoo's subspace vs full training and random subspaces, accuracy vs k.

A new network of the zoo's ``relu`` architecture (``small_cnn``, 3 x
Conv(16, 3x3, stride 2), 4,970 parameters; PyTorch default init, seeds the
zoo never used) is trained on the digits (all 10 classes, and the class
subset 0-4) with only ``k`` coefficients per tensor free
(``min(k, P_t)`` for tensor ``t``):

* ``zoo``: ``theta = mu + V_k c``, basis (mean + top-k directions) fit on the
  last checkpoints of the zoo's *train split*, relu architecture only;
* ``zoo-aligned``: the same after aligning those models to their barycentre
  (weight matching), so mean and directions are in one permutation frame;
* ``random@mu``, ``random@mu-aligned``: the zoo mean (plain, aligned) as
  offset with random orthonormal directions (is it the zoo's directions, or
  only its mean?);
* ``random@init``: the intrinsic-dimension setting of Li et al. (2018): the
  network's own random init ``theta_0`` as offset, random directions
  (per tensor here, where Li et al. project one global vector);

and, without ``k``: ``full@init`` (ordinary training from ``theta_0``),
``full@mu`` / ``full@mu-aligned`` (all parameters trained from the zoo mean)
and ``mu`` / ``mu-aligned`` (the zoo means themselves, no training).

Adam, batch 32, 20 epochs, one loop for all
(:func:`wsl.subspace.train.fit_module`). The learning rate is chosen per
(method, k) from {1e-3, 1e-2, 1e-1, 1} on seed 0 by accuracy on a
validation fifth of the training set (never the test split); seeds 1 and 2
reuse it. Reported: test accuracy, mean and std over the 3 seeds.

    python benchmarks/subspace_training.py   # writes benchmarks/results/subspace_training.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from wsl.align.merge import Barycentre
from wsl.align.weight_matching import weight_matching
from wsl.archs import REGISTRY
from wsl.subspace.basis import Basis, fit
from wsl.subspace.stacks import TensorStack
from wsl.subspace.train import SubspaceModel, fit_module
from wsl.zoo import load_zoo
from wsl.zoo.data import load_dataset

SUBSPACE = ("zoo", "zoo-aligned", "random@mu", "random@mu-aligned", "random@init")
FULL = ("full@init", "full@mu", "full@mu-aligned")


def make_net(seed: int) -> nn.Module:
    torch.manual_seed(50_000 + seed)
    return REGISTRY["small_cnn"](channels=[16, 16, 16], activation="relu")


def zoo_bases(path: str, rank: int, align: bool) -> tuple[dict[str, Basis], dict[str, Any]]:
    """Bases fit on the zoo's train-split relu models (last checkpoints; non-finite models dropped)."""
    zoo = load_zoo(path)
    arch = next(a for a, d in zoo.architectures.items() if d["arch"]["kwargs"].get("activation") == "relu")
    view = zoo.filter(arch=arch).split("train").latest()
    stacked = view.stacked()
    finite = torch.stack([torch.isfinite(v.flatten(1)).all(1) for v in stacked.values()]).all(0)
    keep = torch.nonzero(finite).flatten()
    stacked = {k: v[keep] for k, v in stacked.items()}
    info = {"zoo": str(path), "arch": arch, "models": int(len(keep)), "dropped_non_finite": int((~finite).sum()),
            "zoo_test_accuracy_mean": float(view.column("test_accuracy")[keep.numpy()].mean())}
    info["model_norm_median"] = {k: float(v.flatten(1).norm(dim=1).median()) for k, v in stacked.items()}
    bases = {"zoo": fit(TensorStack(stacked), rank=rank)}
    if align:
        t0 = time.time()
        space = view[0].space
        sds = [{k: v[i] for k, v in stacked.items()} for i in range(len(keep))]
        target = Barycentre(5, start="mean").merge(sds, space=space)
        moved = [weight_matching(target, sd, space).apply(sd) for sd in tqdm(sds, desc="align zoo", leave=False)]
        bases["zoo-aligned"] = fit(TensorStack.from_state_dicts(moved), rank=rank)
        info["align_seconds"] = time.time() - t0
    return bases, info


def build(method: str, k: int, seed: int, bases: dict[str, Basis]) -> nn.Module:
    net = make_net(seed)
    if method == "full@init":
        return net
    which = "zoo-aligned" if method.endswith("aligned") else "zoo"
    if method.startswith("full@mu"):
        net.load_state_dict({n: bases[which].means[n].reshape(bases[which].shapes[n]) for n in bases[which].names})
        return net
    if method in ("zoo", "zoo-aligned"):
        return SubspaceModel.from_basis(net, bases[method], rank=k)
    if method.startswith("random@mu"):
        return SubspaceModel.random(net, k, offsets=bases[which].means, seed=seed)
    if method == "random@init":
        return SubspaceModel.random(net, k, seed=seed)
    raise ValueError(method)


def diagnose(basis: Basis, x: torch.Tensor) -> dict[str, Any]:
    """Per-tensor norms of the basis mean, and the fraction of its ReLUs that fire on ``x`` (is the mean alive?)."""
    net = make_net(0)
    net.load_state_dict({n: basis.means[n].reshape(basis.shapes[n]) for n in basis.names})
    active, h = {}, x
    with torch.no_grad():
        for i, layer in enumerate(net):
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                active[str(i)] = float((h > 0).double().mean())
    return {"mean_norm": {n: float(basis.means[n].norm()) for n in basis.names}, "active_relu_fraction": active}


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).double().mean())


def task_data(classes: list[int] | None) -> dict[str, torch.Tensor]:
    d = load_dataset("digits")
    xtr, ytr, xte, yte = d.x_train, d.y_train, d.x_test, d.y_test
    if classes is not None:
        keep_tr, keep_te = torch.isin(ytr, torch.tensor(classes)), torch.isin(yte, torch.tensor(classes))
        xtr, ytr, xte, yte = xtr[keep_tr], ytr[keep_tr], xte[keep_te], yte[keep_te]
    perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(0))
    n_val = len(xtr) // 5
    return {"x_fit": xtr[perm[n_val:]], "y_fit": ytr[perm[n_val:]], "x_val": xtr[perm[:n_val]],
            "y_val": ytr[perm[:n_val]], "x_test": xte, "y_test": yte}


def run(method: str, k: int, seed: int, lr: float, bases: dict[str, Basis], data: dict[str, torch.Tensor],
        epochs: int) -> dict[str, Any]:
    model = build(method, k, seed, bases)
    hist = fit_module(model, data["x_fit"], data["y_fit"], epochs=epochs, lr=lr, seed=seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"lr": lr, "seed": seed, "val": accuracy(model, data["x_val"], data["y_val"]),
            "test": accuracy(model, data["x_test"], data["y_test"]), "train_loss": hist[-1], "trainable": trainable}


def sweep(method: str, k: int, bases: dict[str, Basis], data: dict[str, torch.Tensor], lrs: list[float],
          seeds: int, epochs: int) -> dict[str, Any]:
    tried = [run(method, k, 0, lr, bases, data, epochs) for lr in lrs]
    best = max(tried, key=lambda r: (r["val"], -r["train_loss"]))
    runs = [best] + [run(method, k, s, best["lr"], bases, data, epochs) for s in range(1, seeds)]
    tests = [r["test"] for r in runs]
    return {"lr": best["lr"], "lr_grid_val": {str(r["lr"]): r["val"] for r in tried}, "runs": runs,
            "test_mean": statistics.mean(tests), "test_std": statistics.pstdev(tests), "trainable": best["trainable"]}


def plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn(f"not drawing {path}: matplotlib is not installed", stacklevel=1)
        return
    tasks = list(results["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.3), squeeze=False)
    colours = {"zoo": "C0", "zoo-aligned": "C1", "random@mu": "C2", "random@mu-aligned": "C4", "random@init": "C3"}
    for ax, task in zip(axes[0], tasks):
        res = results["tasks"][task]
        ks = results["ks"]
        for m in SUBSPACE:
            if m not in res:
                continue
            mean = [100 * res[m][str(k)]["test_mean"] for k in ks]
            std = [100 * res[m][str(k)]["test_std"] for k in ks]
            ax.errorbar(ks, mean, yerr=std, marker="o", ms=4, capsize=3, label=m, color=colours[m])
        for m, style, colour in (("full@init", "--", "k"), ("full@mu", ":", "C0"), ("full@mu-aligned", ":", "C1")):
            if m in res:
                ax.axhline(100 * res[m]["test_mean"], ls=style, color=colour, label=f"{m} (all 4,970)")
        for m, colour in (("mu", "C0"), ("mu-aligned", "C1")):
            if m in res:
                ax.axhline(100 * res[m], ls="-.", color=colour, alpha=0.6, label=f"{m} (no training)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks)
        ax.set_xticklabels([f"{k}\n({res['zoo'][str(k)]['trainable']})" for k in ks])
        ax.set_xlabel("k per tensor (trainable coefficients)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"digits, {task}")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(results: dict[str, Any]) -> str:
    ks = results["ks"]
    lines = []
    for task, res in results["tasks"].items():
        lines += [f"**{task}** (test accuracy %, mean ± std over {results['seeds']} seeds; trainable parameters "
                  "in the header)", "",
                  "| method | " + " | ".join(f"k={k} ({res['zoo'][str(k)]['trainable']})" for k in ks) + " |",
                  "|---|" + "---|" * len(ks)]
        for m in SUBSPACE:
            if m in res:
                lines.append(f"| {m} | " + " | ".join(
                    f"{100 * res[m][str(k)]['test_mean']:.1f} ± {100 * res[m][str(k)]['test_std']:.1f}"
                    for k in ks) + " |")
        extra = [f"{m}: {100 * res[m]['test_mean']:.1f} ± {100 * res[m]['test_std']:.1f}" for m in FULL if m in res]
        extra += [f"{m} (no training): {100 * res[m]:.1f}" for m in ("mu", "mu-aligned") if m in res]
        lines += ["", "All 4,970 parameters: " + "; ".join(extra) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", default="/work/main/zoos-out/digits-cnn-gs")
    ap.add_argument("--ks", default="1,2,4,8,16,32,64")
    ap.add_argument("--lrs", default="0.001,0.01,0.1,1.0")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--tasks", default="all,0-4")
    ap.add_argument("--no-align", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/subspace_training")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # entry point
    ks = [int(k) for k in args.ks.split(",")]
    lrs = [float(v) for v in args.lrs.split(",")]
    t0 = time.time()
    bases, info = zoo_bases(args.zoo, max(ks), align=not args.no_align)
    info["diagnostics"] = {b: diagnose(bases[b], load_dataset("digits").x_train) for b in bases}
    print(f"bases in {time.time() - t0:.0f} s: {info}", flush=True)
    results: dict[str, Any] = {"ks": ks, "lrs": lrs, "seeds": args.seeds, "epochs": args.epochs, "basis": info,
                               "tasks": {}}
    for task in args.tasks.split(","):
        classes = None if task == "all" else list(range(int(task.split("-")[0]), int(task.split("-")[1]) + 1))
        name = "all 10 classes" if classes is None else f"classes {task}"
        data = task_data(classes)
        res: dict[str, Any] = {}
        for m, b in (("mu", "zoo"), ("mu-aligned", "zoo-aligned")):
            if b in bases:
                res[m] = accuracy(SubspaceModel.from_basis(make_net(0), bases[b], rank=0), data["x_test"],
                                  data["y_test"])
        for m in FULL:
            if m.endswith("aligned") and "zoo-aligned" not in bases:
                continue
            res[m] = sweep(m, 0, bases, data, lrs, args.seeds, args.epochs)
            print(name, m, round(res[m]["test_mean"], 3), flush=True)
        jobs = [(m, k) for m in SUBSPACE if not m.endswith("aligned") or "zoo-aligned" in bases for k in ks]
        for m, k in tqdm(jobs, desc=name, unit="run"):
            res.setdefault(m, {})[str(k)] = sweep(m, k, bases, data, lrs, args.seeds, args.epochs)
            tqdm.write(f"{name} {m} k={k}: {res[m][str(k)]['test_mean']:.3f} (lr {res[m][str(k)]['lr']})")
        results["tasks"][name] = res
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    results["seconds"] = time.time() - t0
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.with_suffix(".md").write_text(table(results) + "\n")
    plot(results, out.with_suffix(".png"))
    print(table(results))


if __name__ == "__main__":
    main()

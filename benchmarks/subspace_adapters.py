"""A LoRA collection with a planted confounder: half the adapters share one A initialisation.

One small MLP (64-64-64-10) is trained on the 8x8 digits; then ``n`` LoRA
adapters (rank 4, alpha 8, on all three Linear layers, base frozen) are
fine-tuned from it, each on its own task: the digits with two random pairs
of classes swapped. The first half draws every ``A`` from ONE seed (as many
published collections did), the second half from one seed per adapter; ``B``
starts at 0 as in PEFT. Regimes: A frozen at its init (LoRA-FA: the shared
group's A are then identical), and A and B both trained with Adam at two
learning rates (A moves away from its init). The LoRA module is written here (``dW = s B A``,
PEFT's init), so PEFT is not needed; the adapters are saved in PEFT's format
and read back through ``wsl.subspace.open_source`` like any collection.

Reported: each adapter's accuracy on its task (vs the base on it); the
confounder report (pairwise cosine of the A matrices, clusters of
near-identical A) at several thresholds; and, per group, the spectrum of the
``dW`` stack and the overlap of the adapters' row spaces, which a shared A
makes near 1 by construction.

    python benchmarks/subspace_adapters.py      # writes benchmarks/results/subspace_adapters.{json,md,png}
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from wsl.io import atomic_save_safetensors, atomic_write
from wsl.subspace.adapter_nulls import init_factor
from wsl.subspace.adapters import adapter_confounders
from wsl.subspace.nulls import mp_spectrum
from wsl.subspace.sources import open_source
from wsl.subspace.spectrum import overlap, spectrum
from wsl.zoo.data import load_dataset

TARGETS = ("0", "2", "4")
RANK, ALPHA = 4, 8


class LoraLinear(nn.Module):
    """``y = W x + b + s B A x`` with ``W, b`` frozen; ``A`` from PEFT's kaiming-uniform init, ``B = 0``."""

    def __init__(self, base: nn.Linear, a: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.A = nn.Parameter(a.clone())
        self.B = nn.Parameter(torch.zeros(base.out_features, a.shape[0]))
        self.scale = ALPHA / RANK

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def train(model: nn.Module, params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor, steps: int, lr: float,
          seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=gen)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def task_permutation(k: int) -> torch.Tensor:
    """Adapter ``k``'s labels: two disjoint random pairs of classes swapped."""
    g = torch.Generator().manual_seed(10_000 + k)
    c = torch.randperm(10, generator=g)[:4].tolist()
    perm = torch.arange(10)
    perm[c[0]], perm[c[1]], perm[c[2]], perm[c[3]] = c[1], c[0], c[3], c[2]
    return perm


def make_adapters(root: Path, n: int, steps: int, lr: float, train_a: bool = True) -> dict[str, Any]:
    ds = load_dataset("digits")
    xtr, ytr = ds.x_train.reshape(len(ds.x_train), -1), ds.y_train
    xte, yte = ds.x_test.reshape(len(ds.x_test), -1), ds.y_test
    torch.manual_seed(0)
    base = mlp()
    train(base, list(base.parameters()), xtr, ytr, 1500, 1e-3, seed=0)
    for p in base.parameters():
        p.requires_grad_(False)
    for old in list(root.glob("shared-[0-9][0-9]")) + list(root.glob("indep-[0-9][0-9]")):  # an earlier run's
        shutil.rmtree(old)
    rows = []
    for k in range(n):
        shared = k < n // 2
        gen = torch.Generator().manual_seed(1234 if shared else 1234 + 1 + k)
        model = mlp()
        model.load_state_dict(base.state_dict())
        for m in TARGETS:
            lin = model[int(m)]
            model[int(m)] = LoraLinear(lin, init_factor("linear", "A", (RANK, lin.in_features), RANK, True, gen))
        for p in model.parameters():
            p.requires_grad_(False)
        lora = [p for n_, p in model.named_parameters() if n_.endswith((".A", ".B") if train_a else ".B")]
        for p in lora:
            p.requires_grad_(True)
        perm = task_permutation(k)
        train(model, lora, xtr, perm[ytr], steps, lr, seed=k)
        name = f"{'shared' if shared else 'indep'}-{k:02d}"
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for m in TARGETS:
            tensors[f"base_model.model.{m}.lora_A.weight"] = model[int(m)].A.detach()
            tensors[f"base_model.model.{m}.lora_B.weight"] = model[int(m)].B.detach()
        atomic_save_safetensors(tensors, folder / "adapter_model.safetensors")
        cfg = {"peft_type": "LORA", "base_model_name_or_path": "local/digits-mlp-64", "r": RANK, "lora_alpha": ALPHA,
               "target_modules": list(TARGETS), "use_rslora": False, "fan_in_fan_out": False,
               "init_lora_weights": True, "rank_pattern": {}, "alpha_pattern": {}}
        with atomic_write(folder / "adapter_config.json") as tmp:
            tmp.write_text(json.dumps(cfg, indent=1))
        rows.append({"adapter": name, "group": "shared" if shared else "indep",
                     "task_accuracy": accuracy(model, xte, perm[yte]), "base_on_task": accuracy(base, xte, perm[yte])})
    return {"base_test_accuracy": accuracy(base, xte, yte), "adapters": rows}


def row_space_overlap(stack: Any, name: str, models: list[int]) -> float:
    """Mean over pairs of the overlap of the top-``RANK`` right singular subspaces of two adapters' ``dW``."""
    spaces = []
    for i in models:
        _, _, vh = torch.linalg.svd(stack.model_tensor(i, name, dtype=torch.float64), full_matrices=False)
        spaces.append(vh[:RANK].T)
    vals = [overlap(spaces[i], spaces[j]) for i in range(len(spaces)) for j in range(i + 1, len(spaces))]
    return sum(vals) / len(vals)


def analyse(root: Path) -> dict[str, Any]:
    src = open_source(root)
    t0 = time.perf_counter()
    rep = adapter_confounders(src, threshold=0.99, warn=False)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"confounders": rep.to_dict(), "confounder_seconds": seconds, "markdown": rep.markdown()}
    cos = rep.cosine["A"]["(all)"]
    ids = src.stack.ids
    groups = {g: [i for i, a in enumerate(ids) if a.startswith(g)] for g in ("shared", "indep")}
    out["median_cos_A"] = {}
    for a, b in (("shared", "shared"), ("indep", "indep"), ("shared", "indep")):
        sub = cos[groups[a]][:, groups[b]]
        vals = sub[~torch.eye(*sub.shape, dtype=torch.bool)] if a == b else sub.reshape(-1)
        out["median_cos_A"][f"{a} x {b}"] = float(vals.median())
    out["thresholds"] = {str(t): adapter_confounders(src, threshold=t, warn=False).to_dict()["A"]["overall"]
                         ["fraction_in_clusters"] for t in (0.5, 0.9, 0.99, 0.999)}
    a_view, a_null = src.info["views"]["lora_A"], src.info["init_views"]["lora_A"]
    spec: dict[str, Any] = {}
    for m in TARGETS:
        for g, idx in groups.items():
            sp = spectrum(src.stack, f"{m}.delta", models=idx)
            mp = mp_spectrum(sp)
            spec[f"{m}/{g}"] = {"effective_rank": sp.effective_rank, "mp_effective_rank": mp.effective_rank,
                                "rank_for_0.9": sp.rank_for(0.9), "explained_at_4": sp.explained_at(4),
                                "row_space_overlap": row_space_overlap(src.stack, f"{m}.delta", idx),
                                "random_row_space_overlap": RANK / src.stack.shapes[f"{m}.delta"][1],
                                "A_total_variance": spectrum(a_view, f"{m}.lora_A", models=idx).total_variance,
                                "A_init_null_total_variance": spectrum(a_null, f"{m}.lora_A",
                                                                       models=idx).total_variance}
    out["delta"] = spec
    out["_cos"] = cos
    return out


def plot(cos: torch.Tensor, ids: list[str], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure")
        return False
    fig, ax = plt.subplots(figsize=(6, 5))
    im = ax.imshow(cos.numpy(), vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(ids)), ids, rotation=90, fontsize=6)
    ax.set_yticks(range(len(ids)), ids, fontsize=6)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return True


def markdown(runs: dict[str, dict[str, Any]], args: argparse.Namespace, seconds: float) -> str:
    lrs = " ".join(f"{x:g}" for x in args.lrs)
    lines = [f"# LoRA collection with a planted shared A init ({args.n} adapters per regime)", "",
             f"`python benchmarks/subspace_adapters.py --n {args.n} --steps {args.steps} --lrs {lrs} "
             f"--frozen-a-lr {args.frozen_a_lr:g}` "
             f"({seconds:.0f} s on CPU, one thread). Each adapter's task: the digits with two class pairs swapped; "
             f"`shared-*` adapters drew A from one seed, `indep-*` from one seed each; {args.steps} Adam steps.", ""]
    for lr, res in runs.items():  # lr: the regime's label
        acc = res["adapters"]
        lines += [f"## {lr}", "", f"Base MLP test accuracy {res['base_test_accuracy']:.3f}.", "",
                  "| group | adapters | mean task accuracy | base on those tasks |", "|---|---:|---:|---:|"]
        for g in ("shared", "indep"):
            rows = [r for r in acc if r["group"] == g]
            lines.append(f"| {g} | {len(rows)} | {sum(r['task_accuracy'] for r in rows) / len(rows):.3f} | "
                         f"{sum(r['base_on_task'] for r in rows) / len(rows):.3f} |")
        lines += ["", "Confounder report (`adapter_confounders(src, threshold=0.99, related=0.5)`, "
                  f"{res['confounder_seconds']:.2f} s):", "", res["markdown"], "",
                  "Median cosine of A (all targets): "
                  + ", ".join(f"{k}: {v:.3f}" for k, v in res["median_cos_A"].items()), "",
                  "Fraction of adapters in near-identical-A clusters vs threshold: "
                  + ", ".join(f"{k}: {v:.2f}" for k, v in res["thresholds"].items()), "",
                  "| target / group | dW eff. rank | MP null eff. rank | dW rank for 90% | dW var. in top 4 | "
                  "dW row-space overlap (random) | A total var. | A-init null total var. |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for key, s in res["delta"].items():
            lines.append(f"| {key} | {s['effective_rank']:.2f} | {s['mp_effective_rank']:.2f} | "
                         f"{s['rank_for_0.9']} | {s['explained_at_4']:.3f} | {s['row_space_overlap']:.3f} "
                         f"({s['random_row_space_overlap']:.3f}) | {s['A_total_variance']:.4f} | "
                         f"{s['A_init_null_total_variance']:.4f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-4, 3e-3], help="Adam learning rates (A and B "
                    "trained)")
    ap.add_argument("--frozen-a-lr", type=float, default=3e-3, help="also a LoRA-FA run: A frozen at its init, B "
                    "trained at this learning rate (0: skip)")
    ap.add_argument("--adapters", type=Path, default=Path("/tmp/wsl-lora-collection"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    runs: dict[str, dict[str, Any]] = {}
    first_cos = None
    regimes = [(f"A frozen (LoRA-FA), Adam lr {args.frozen_a_lr:g}", f"frozenA-lr{args.frozen_a_lr:g}",
                 args.frozen_a_lr, False)] if args.frozen_a_lr > 0 else []
    regimes += [(f"A and B trained, Adam lr {lr:g}", f"lr{lr:g}", lr, True) for lr in args.lrs]
    for label, folder, lr, train_a in regimes:
        root = args.adapters / folder
        res = make_adapters(root, args.n, args.steps, lr, train_a)
        res.update(analyse(root))
        cos = res.pop("_cos")
        first_cos = cos if first_cos is None else first_cos
        runs[label] = res
        print(f"{label}: done ({time.perf_counter() - t0:.0f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(first_cos, runs[regimes[0][0]]["confounders"]["ids"], args.out / "subspace_adapters.png",
         f"cosine of the adapters' A (all targets), {regimes[0][0]}")
    with atomic_write(args.out / "subspace_adapters.json") as tmp:
        tmp.write_text(json.dumps({lr: {k: v for k, v in r.items() if k != "markdown"} for lr, r in runs.items()},
                                  indent=1, default=float))
    text = markdown(runs, args, time.perf_counter() - t0)
    with atomic_write(args.out / "subspace_adapters.md") as tmp:
        tmp.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

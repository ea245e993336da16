"""Subspace compression of real zoos vs float16, int8, per-model SVD and mean-only, at equal bytes; leave-one-out.

For each zoo (last checkpoint of every model), per architecture:

* **subspace k**: the mean and top-k principal directions per tensor, fitted on
  all the zoo's last-checkpoint models of that architecture
  (:func:`wsl.subspace.basis.fit`), every model stored as its
  coefficients; bytes = basis + coefficients (float32);
* **mean only** (k = 0): every model replaced by the mean; bytes = the mean;
* **float16**: every weight rounded to half precision;
* **int8**: per (model, tensor) symmetric quantisation ``round(w / s)``,
  ``s = max|w| / 127`` (one float32 scale per tensor);
* **per-model SVD r**: every weight matrix of every model (conv kernels as
  ``out x (in * kh * kw)``) truncated to rank r (kept whole where rank r
  would not save bytes); vectors kept in float32.

Every model's reconstruction is evaluated on the zoo's test split with the
vectorized functional forward (:func:`wsl.zoo.vectorized.evaluate`, the code
that measured the zoo's own ``test_accuracy``) and compared with the model's
original accuracy measured the same way: mean difference, and the fraction of
models within 1 point. Models with non-finite weights are left out (counted).

**Leave-one-out** (exact, not approximated): for ``--loo`` held-out models
(seeded sample over the zoo), a basis is fitted on the other N-1 models of
its architecture, the held-out model is projected at each k and evaluated.
The LOO histogram shows the held-out models whose original accuracy is at
least 50% (near-chance models stay near chance whatever is done to them).

``digits-cnn-gs-aligned`` is the same zoo after ``wsl zoo align`` (every
model permuted onto the zoo's barycentre by weight matching; functions and
accuracies unchanged), to see whether removing the permutation symmetry
concentrates the variance.

    python benchmarks/subspace_compress.py [--zoos NAME ...]
    # writes benchmarks/results/subspace_compress.{json,md,png} and subspace_loo.png
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsl.subspace.basis import fit
from wsl.subspace.functional import GOOD, evaluator, fp16, int8, subspace_sweep, summarise
from wsl.subspace.stacks import TensorStack
from wsl.zoo import load_zoo
from wsl.zoo.data import load_dataset

ZOOS = ("digits-cnn-gs", "digits-cnn-gs-aligned", "mnist1d-mlp", "mnist1d-mlp-aligned")
"""Known zoo folders, in report order (``--zoos`` also takes paths; a zoo is labelled by its folder name)."""
KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
SVD_RANKS = (1, 2, 4, 8, 16, 32)
LOO_KS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)
Stacked = dict[str, torch.Tensor]


def svd(stacked: Stacked, r: int) -> tuple[Stacked, int]:
    out, nbytes = {}, 0
    for k, v in stacked.items():
        if v.dim() < 3 or not v.is_floating_point():  # (N,) scalars, vectors (N, P) and int buffers stay
            out[k], nbytes = v, nbytes + v.numel() * v.element_size()
            continue
        n, m = v.shape[0], v.shape[1]
        mat = v.reshape(n, m, -1).double()
        rest = mat.shape[2]
        if r * (m + rest) >= m * rest:
            out[k], nbytes = v, nbytes + 4 * v.numel()
            continue
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
        out[k] = ((u[..., :r] * s[:, None, :r]) @ vh[:, :r]).reshape(v.shape).float()
        nbytes += 4 * n * r * (m + rest)
    return out, nbytes


def loo(groups: dict[str, Any], sample: list[tuple[str, int]], ks: tuple[int, ...]) -> dict[str, Any]:
    """Exact leave-one-out: accuracy kept by each held-out model at each k."""
    from tqdm.auto import tqdm

    kept: dict[int, list[float]] = {k: [] for k in ks}
    insample: dict[int, list[float]] = {k: [] for k in ks}
    orig = []
    by_arch: dict[str, dict[int, list[Stacked]]] = {}
    for aid, i in tqdm(sample, desc="leave-one-out fits", unit="model"):
        g = groups[aid]
        floats = {k: v for k, v in g["stacked"].items() if v.is_floating_point()}
        n = next(iter(floats.values())).shape[0]
        others = [j for j in range(n) if j != i]
        basis = fit(TensorStack(floats).subset(others), rank=max(ks))
        for k in ks:
            b = basis.truncate(k)
            rec = {name: t[i:i + 1] for name, t in g["stacked"].items()}
            rec.update({name: t.unsqueeze(0) for name, t in
                        b.reconstruct(b.project({nm: floats[nm][i] for nm in b.names})).items()})
            by_arch.setdefault(aid, {}).setdefault(k, []).append(rec)
    for aid in by_arch:
        idx = [i for a, i in sample if a == aid]
        g = groups[aid]
        orig.extend(g["orig"][idx].tolist())
        for k in ks:
            stacked = {name: torch.cat([r[name] for r in by_arch[aid][k]]) for name in g["stacked"]}
            kept[k].extend((g["acc"](stacked) - g["orig"][idx]).tolist())
            insample[k].extend((g["subspace"][k][idx] - g["orig"][idx]).tolist() if k in g["subspace"] else [])
    res = {"models": len(sample), "original_accuracy": float(np.mean(orig)), "originals": orig,
           "good_models": int((np.array(orig) >= GOOD).sum()), "per_k": {}}
    good = np.array(orig) >= GOOD
    for k in ks:
        d = np.array(kept[k])
        res["per_k"][str(k)] = {"mean_diff": float(d.mean()), "median_diff": float(np.median(d)),
                                "within_1pt": float((np.abs(d) <= 0.01 + 1e-9).mean()),
                                "within_1pt_good": float((np.abs(d[good]) <= 0.01 + 1e-9).mean()),
                                "mean_diff_good": float(d[good].mean()),
                                "accuracy": float(np.mean(orig) + d.mean()), "diffs": d.tolist(),
                                "in_sample_mean_diff": float(np.mean(insample[k])) if insample[k] else None}
    return res


def run_zoo(path: Path, ks: tuple[int, ...], loo_n: int, seed: int) -> dict[str, Any]:
    zoo = load_zoo(path).latest()
    data = load_dataset(str(zoo.card["dataset"]["name"]))
    res: dict[str, Any] = {"zoo": path.name, "name": zoo.name, "path": str(path), "dataset": data.name,
                           "archs": {}, "methods": []}
    groups: dict[str, Any] = {}
    totals: dict[tuple[str, Any], list[Any]] = {}
    orig_all, orig_bytes, dropped = [], 0, 0
    for aid in zoo.architectures:
        view = zoo.filter(arch=aid)
        if not len(view):
            continue
        stacked = view.stacked()
        finite = torch.ones(len(view), dtype=torch.bool)
        for v in stacked.values():
            if v.is_floating_point():
                finite &= torch.isfinite(v.reshape(len(view), -1)).all(1)
        dropped += int((~finite).sum())
        stacked = {k: v[finite] for k, v in stacked.items()}
        acc = evaluator(zoo.card["architectures"][aid]["arch"], data)
        orig = acc(stacked)
        stored = torch.tensor(view.column("test_accuracy")[finite.numpy()], dtype=torch.float32)
        n = len(orig)
        nbytes = sum(v.numel() * v.element_size() for v in stacked.values())
        res["archs"][aid] = {"models": n, "params": int(sum(v[0].numel() for v in stacked.values())),
                             "eval_vs_stored_max_abs": float((orig - stored).abs().max())}
        orig_all.append(orig)
        orig_bytes += nbytes
        methods: list[tuple[str, Any, Stacked, int]] = [("float16", None, *fp16(stacked)),
                                                        ("int8", None, *int8(stacked))]
        methods += [("svd", r, *svd(stacked, r)) for r in SVD_RANKS]
        sweep = subspace_sweep(stacked, (0, *ks))
        methods += [("mean only" if k == 0 else "subspace", k, rec, b) for k, rec, b in sweep]
        sub_acc = {}
        for name, param, rec, b in methods:
            a = acc(rec)
            if name in ("subspace", "mean only"):
                sub_acc[param] = a
            totals.setdefault((name, param), []).append((a, b))
        groups[aid] = {"stacked": stacked, "orig": orig, "acc": acc, "subspace": sub_acc}
        print(f"{path.name} {aid}: {n} models evaluated", flush=True)
    orig_cat = torch.cat(orig_all)
    res.update(models=len(orig_cat), nonfinite_models_left_out=dropped, original_bytes=orig_bytes,
               original_accuracy=float(orig_cat.mean()))
    for (name, param), parts in totals.items():
        if name == "svd" and sum(b for _, b in parts) >= orig_bytes:
            continue  # rank r saves nothing on any matrix: the original itself
        res["methods"].append(summarise(name, param, sum(b for _, b in parts), orig_bytes,
                                        torch.cat([a for a, _ in parts]), orig_cat))
    rng = np.random.default_rng(seed)
    pool = [(aid, i) for aid, g in groups.items() for i in range(len(g["orig"]))]
    sample = [pool[j] for j in sorted(rng.choice(len(pool), size=min(loo_n, len(pool)), replace=False).tolist())]
    t0 = time.time()
    res["loo"] = loo(groups, sample, tuple(k for k in LOO_KS if k <= max(ks)))
    res["loo"]["seconds"] = time.time() - t0
    return res


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        print("warning: matplotlib is not installed; figures are skipped (everything else is written)")
        return None
    return plt


def plot_compression(results: list[dict[str, Any]], path: Path) -> None:
    plt = _pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 8), squeeze=False)
    styles = {"subspace": "o-", "svd": "s--", "float16": "^", "int8": "v", "mean only": "x"}
    for col, res in enumerate(results):
        for row, (key, label) in enumerate((("accuracy", "mean test accuracy (all models)"),
                                            ("within_1pt_good", f"models >= {100 * GOOD:.0f}%: fraction within "
                                                                "1 point"))):
            ax = axes[row][col]
            for method, style in styles.items():
                pts = sorted((m["ratio"], m[key]) for m in res["methods"] if m["method"] == method)
                if pts:
                    ax.plot(*zip(*pts), style, label=method, markersize=7)
            if key == "accuracy":
                ax.axhline(res["original_accuracy"], color="gray", lw=1, ls=":", label="original")
            ax.set_xscale("log")
            ax.set_xlabel("compression ratio (original bytes / stored bytes)")
            ax.set_ylabel(label)
            ax.set_title(f"{res['zoo']} ({res['models']} models, last checkpoint)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loo(results: list[dict[str, Any]], path: Path, show: tuple[int, ...] = (0, 8, 32, 128)) -> None:
    plt = _pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 8), squeeze=False)
    for col, res in enumerate(results):
        per_k = res["loo"]["per_k"]
        ax = axes[0][col]
        bins = np.linspace(-1, 0.1, 45)
        good = np.array(res["loo"]["originals"]) >= GOOD
        for k in show:
            if str(k) in per_k:
                ax.hist(np.clip(np.array(per_k[str(k)]["diffs"])[good], -1, 0.1), bins=bins, histtype="step", lw=1.6,
                        label=f"k={k}")
        ax.set_xlabel("held-out model: reconstructed - original test accuracy")
        ax.set_ylabel("models")
        ax.set_title(f"{res['zoo']}: leave-one-out, the {int(good.sum())} of {res['loo']['models']} held-out\n"
                     f"models with original accuracy >= {100 * GOOD:.0f}%", fontsize=10)
        ax.legend(fontsize=8)
        ax = axes[1][col]
        ks = [int(k) for k in per_k]
        xs = [max(k, 0.5) for k in ks]
        ax.plot(xs, [per_k[str(k)]["mean_diff"] for k in ks], "o-", label="held out (LOO)")
        ax.plot(xs, [per_k[str(k)]["in_sample_mean_diff"] for k in ks], "s--", label="in the fit (same models)")
        ax.axhline(0, color="gray", lw=1, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("k (directions per tensor; 0 plotted at 0.5 = mean only)")
        ax.set_ylabel("mean accuracy change (all held-out models)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pct(v: float, sign: bool = False) -> str:
    return f"{100 * v:+.2f}" if sign else f"{100 * v:.1f}%"


def markdown(results: list[dict[str, Any]]) -> str:
    order = {"float16": 0, "int8": 1, "svd": 2, "mean only": 3, "subspace": 4}
    setting = {"svd": "rank {}", "subspace": "k = {}", "mean only": "k = 0"}
    lines = []
    for res in results:
        lines += [f"### {res['zoo']}: {res['models']} models (last checkpoint), {res['dataset']} test split", "",
                  f"Original: {res['original_bytes']:,} bytes (float32), mean test accuracy "
                  f"{100 * res['original_accuracy']:.2f}%; models with non-finite weights left out: "
                  f"{res['nonfinite_models_left_out']}; models at >= {100 * GOOD:.0f}%: "
                  f"{res['methods'][0]['good_models']}.", "",
                  "| method | setting | bytes | ratio | mean acc. | mean change (pts) | median change (pts) "
                  f"| within 1 pt | within 1 pt (models >= {100 * GOOD:.0f}%) |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for m in sorted(res["methods"], key=lambda m: (order[m["method"]], m["param"] or 0)):
            cells = [m["method"], setting.get(m["method"], "").format(m["param"]), f"{m['bytes']:,}",
                     f"{m['ratio']:.1f}", f"{100 * m['accuracy']:.2f}", _pct(m["mean_diff"], True),
                     _pct(m["median_diff"], True), _pct(m["within_1pt"]), _pct(m["within_1pt_good"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "At equal bytes (the largest subspace k whose bytes do not exceed the baseline's):", "",
                  "| baseline | ratio | mean change | within 1 pt (>= 50%) | subspace k | ratio | mean change "
                  "| within 1 pt (>= 50%) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        subs = sorted((m for m in res["methods"] if m["method"] in ("subspace", "mean only")),
                      key=lambda m: m["bytes"])
        for m in res["methods"]:
            fit = [s for s in subs if s["bytes"] <= m["bytes"]]
            if m["method"] in ("subspace", "mean only") or not fit:
                continue
            s = fit[-1]
            name = m["method"] + (f" r={m['param']}" if m["param"] else "")
            lines.append(f"| {name} | {m['ratio']:.1f} | {_pct(m['mean_diff'], True)} | {_pct(m['within_1pt_good'])} "
                         f"| {s['param']} | {s['ratio']:.1f} | {_pct(s['mean_diff'], True)} "
                         f"| {_pct(s['within_1pt_good'])} |")
        lo = res["loo"]
        lines += ["", f"Leave-one-out (exact: basis fitted on the other N-1 models of the architecture), "
                  f"{lo['models']} held-out models (seeded sample), original mean accuracy "
                  f"{100 * lo['original_accuracy']:.2f}%, {lo['good_models']} of them at >= {100 * GOOD:.0f}%:", "",
                  "| k | held-out mean change (pts) | median | within 1 pt | models >= 50%: mean change "
                  "| models >= 50%: within 1 pt | same models in the fit: mean change |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for k, v in lo["per_k"].items():
            ins = "" if v["in_sample_mean_diff"] is None else _pct(v["in_sample_mean_diff"], True)
            lines.append(f"| {k} | {_pct(v['mean_diff'], True)} | {_pct(v['median_diff'], True)} "
                         f"| {_pct(v['within_1pt'])} | {_pct(v['mean_diff_good'], True)} "
                         f"| {_pct(v['within_1pt_good'])} | {ins} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoos-dir", default="/work/main/zoos-out")
    ap.add_argument("--zoos", nargs="+", default=["digits-cnn-gs", "mnist1d-mlp"],
                    help="zoo folder names under --zoos-dir, or paths")
    ap.add_argument("--loo", type=int, default=100, help="held-out models per zoo (seeded sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--report-only", action="store_true", help="redraw the tables and figures from the JSON")
    ap.add_argument("--fresh", action="store_true", help="drop results of zoos not run now from the JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # entry point
    results = []
    for name in [] if args.report_only else args.zoos:
        t0 = time.time()
        path = Path(name) if Path(name).is_dir() else Path(args.zoos_dir) / name
        res = run_zoo(path, KS, args.loo, args.seed)
        res["seconds"] = time.time() - t0
        results.append(res)
        print(f"{name}: {res['seconds']:.0f} s", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = {r["zoo"]: r for r in results}
    if (out / "subspace_compress.json").is_file() and not args.fresh:  # keep the other zoos' results
        for r in json.loads((out / "subspace_compress.json").read_text())["zoos"]:
            done.setdefault(r["zoo"], r)
    results = sorted(done.values(), key=lambda r: (ZOOS.index(r["zoo"]) if r["zoo"] in ZOOS else 99, r["zoo"]))
    (out / "subspace_compress.json").write_text(json.dumps({"zoos": results, "ks": KS, "svd_ranks": SVD_RANKS,
                                                            "seed": args.seed}, indent=1))
    md = markdown(results)
    (out / "subspace_compress.md").write_text(md)
    plot_compression(results, out / "subspace_compress.png")
    plot_loo(results, out / "subspace_loo.png")
    print(md)


if __name__ == "__main__":
    main()

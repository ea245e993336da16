"""Reproduce the README's generalization-prediction table.

For each zoo, method and seed this runs ``wsl train configs/generalization/<zoo>_<method>.yaml
train.seed=<seed>`` (a subprocess per run, resumable: finished runs are reused), then prints
Kendall tau and R^2 on the zoos' *test* splits as mean ± std over seeds, with wall time.

    python benchmarks/generalization_table.py                     # everything, 3 seeds
    python benchmarks/generalization_table.py --zoos gs --methods statnn_gbt,hnp --seeds 0
    python benchmarks/generalization_table.py --parallel 2        # two 1-thread runs at a time
    python benchmarks/generalization_table.py --collect           # only tabulate the runs already finished

Zoos (generate them first, a few minutes each):

    wsl zoo generate zoos/digits-cnn-gs.yaml   -o zoos-out/digits-cnn-gs     # from the repository root: the
    wsl zoo generate zoos/digits-cnn-wild.yaml -o zoos-out/digits-cnn-wild   # configs read zoos-out/<zoo>

Dense meta-models (NP, HNP, NFT) need one architecture, so they run on digits-cnn-gs only.
``*_probes`` methods add probe features (the network's outputs on 32 seeded synthetic inputs,
wsl.tasks.probes) to the meta-model's head; ``statnn_probes_gbt`` is gradient boosting on the
same probe features plus StatNN, the matching non-learned control (``statnn_probes256_gbt``
for ``nggnn_probes256``, whose probes are half random pen strokes). ``*_inv256`` methods read probe features on
256 inputs synthesized by inverting the training split's networks (wsl.tasks.inversion); ``statnn_inv256_gbt``
is their control.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
METHODS = {
    "gs": ["hparams_gbt", "statnn_linear", "statnn_gbt", "statnn_gbt_all", "statnn_probes_gbt", "statnn_probes256_gbt", "np",
           "hnp", "nft", "nggnn", "ngt", "hnp_probes", "hnp_lprobes", "hnp_probes256", "statnn_inv256_gbt", "hnp_inv256"],
    "wild": ["hparams_gbt", "statnn_linear", "statnn_gbt", "statnn_gbt_all", "statnn_probes_gbt", "nggnn", "ngt",
             "statnn_probes256_gbt", "nggnn_probes", "nggnn_probes128", "nggnn_probes256", "nggnn_lprobes",
             "statnn_inv256_gbt", "nggnn_inv256"],
}
LABELS = {"hparams_gbt": "Hyperparameters only (GBT)", "statnn_linear": "StatNN (linear)",
          "statnn_gbt": "StatNN (gradient boosting)", "statnn_gbt_all": "StatNN (gradient boosting, all epochs)", "np": "NP (NFN)", "hnp": "HNP (NFN)", "nft": "NFT",
          "nggnn": "NG-GNN", "ngt": "NG-T", "statnn_probes_gbt": "StatNN + probe features (gradient boosting)",
          "hnp_probes": "HNP + probe features", "nggnn_probes": "NG-GNN + probe features",
          "nggnn_lprobes": "NG-GNN + learned probe features", "nggnn_probes128": "NG-GNN + 128 probe features",
          "hnp_probes256": "HNP + 256 probe features (128 with pen strokes)",
          "nggnn_probes256": "NG-GNN + 256 probe features (128 with pen strokes)",
          "statnn_probes256_gbt": "StatNN + 256 probe features (with pen strokes; gradient boosting, all epochs)", "hnp_lprobes": "HNP + learned probe features",
          "hnp_inv256": "HNP + 256 inverted probes", "nggnn_inv256": "NG-GNN + 256 inverted probes",
          "statnn_inv256_gbt": "StatNN + 256 inverted probes (gradient boosting, all epochs)"}
#: the non-learned control with the same probe features, per learned probe method (default statnn_probes_gbt)
CONTROLS = {"nggnn_probes256": "statnn_probes256_gbt", "hnp_probes256": "statnn_probes256_gbt",
            "nggnn_inv256": "statnn_inv256_gbt", "hnp_inv256": "statnn_inv256_gbt"}
ZOO_NAMES = {"gs": "digits-cnn-gs", "wild": "digits-cnn-wild"}


def run_one(zoo: str, method: str, seed: int, runs: Path, extra: list[str], collect: bool = False) -> dict:
    out = runs / f"{zoo}_{method}_s{seed}"
    metrics = out / "metrics.json"
    if not metrics.is_file():
        if collect:
            return {}
        cfg = REPO / "configs" / "generalization" / f"{zoo}_{method}.yaml"
        cmd = [sys.executable, "-m", "wsl", "train", str(cfg), f"train.seed={seed}", "train.progress=false",
               "--output", str(out), *extra]
        env = dict(os.environ, OMP_NUM_THREADS="1")
        t0 = time.time()
        res = subprocess.run(cmd, env=env, capture_output=True, text=True)
        (runs / "logs").mkdir(parents=True, exist_ok=True)
        (runs / "logs" / f"{out.name}.log").write_text(res.stdout + res.stderr)
        if res.returncode != 0 or not metrics.is_file():
            print(f"  FAILED {out.name} (rc {res.returncode}); see {runs / 'logs' / (out.name + '.log')}",
                  flush=True)
            return {}
        print(f"  done {out.name} in {time.time() - t0:.0f}s", flush=True)
    m = json.loads(metrics.read_text())
    return {"tau": m["test"]["tau"], "r2": m["test"]["r2"], "mae": m["test"]["mae"], "val_tau": m["val"]["tau"],
            "n_test": m["test"]["n"], "wall": m.get("wall_time_s", float("nan"))}


def ensemble(zoo_key: str, method: str, seeds: list[int], runs: Path) -> dict | None:
    """Test metrics of the mean prediction of the seeds' predictors (runs trained here only)."""
    dirs = [runs / f"{zoo_key}_{method}_s{s}" for s in seeds]
    dirs = [d for d in dirs if (d / "predictor" / "config.json").is_file() and (d / "metrics.json").is_file()]
    if len(dirs) < 2:
        return None
    import wsl
    from wsl.tasks.generalization import select_rows, target_values
    from wsl.tasks.metrics import regression_metrics
    from wsl.train.predictor import load_predictor

    data = json.loads((dirs[0] / "metrics.json").read_text())["config"]["data"]
    zoo = wsl.load_zoo(data["zoo"])
    test = select_rows(zoo, data["test_split"], data["checkpoints"], data["target"], data["arch"])
    preds = np.mean([load_predictor(d / "predictor").predict_zoo(test) for d in dirs], axis=0)
    m = regression_metrics(preds, target_values(test, data["target"]))
    return {"tau": m["tau"], "r2": m["r2"], "mae": m["mae"], "n_models": len(dirs), "n_test": m["n"]}


def blend(zoo_key: str, method: str, seeds: list[int], runs: Path) -> dict | None:
    """Test metrics of the plain average of (the mean prediction of ``method``'s seeds) and (its GBT control's
    prediction, seed 0; the control is deterministic): an ensemble of two model families, weights fixed at 1/2."""
    control = CONTROLS.get(method)
    saved = runs / f"{zoo_key}_{control}_s{seeds[0]}" / "predictions.json"
    if control is None or not saved.is_file():
        return None
    dirs = [runs / f"{zoo_key}_{method}_s{s}" for s in seeds]
    dirs = [d for d in dirs if (d / "predictor" / "config.json").is_file() and (d / "metrics.json").is_file()]
    if not dirs:
        return None
    import wsl
    from wsl.tasks.generalization import select_rows, target_values
    from wsl.tasks.metrics import regression_metrics
    from wsl.train.predictor import load_predictor

    data = json.loads((dirs[0] / "metrics.json").read_text())["config"]["data"]
    zoo = wsl.load_zoo(data["zoo"])
    test = select_rows(zoo, data["test_split"], data["checkpoints"], data["target"], data["arch"])
    true = target_values(test, data["target"])
    gbt = json.loads(saved.read_text())["test"]
    if not np.allclose(np.asarray(gbt["true"]), true):
        raise SystemExit(f"{saved}: its test rows are not the test rows of {dirs[0]}")
    learned = np.mean([load_predictor(d / "predictor").predict_zoo(test) for d in dirs], axis=0)
    m = regression_metrics(0.5 * learned + 0.5 * np.asarray(gbt["predicted"]), true)
    return {"tau": m["tau"], "r2": m["r2"], "mae": m["mae"], "n_models": len(dirs), "control": control,
            "n_test": m["n"]}


def fmt(xs: list[float], digits: int = 3) -> str:
    a = np.asarray([x for x in xs if x is not None], dtype=float)
    if a.size == 0:
        return "n/a"
    if a.size == 1:
        return f"{a[0]:.{digits}f}"
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1):.{digits}f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoos", default="gs,wild")
    ap.add_argument("--methods", default=None, help="comma list (default: all for each zoo)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--runs-dir", default=str(REPO / "runs" / "table"))
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time (each uses 1 thread)")
    ap.add_argument("--out", default=None,
                    help="write the table to OUT.md / OUT.json (default: benchmarks/results/generalization_table, "
                         "but only for the full table: a --zoos/--methods/--seeds subset is printed, not written, "
                         "unless --out is given)")
    ap.add_argument("--collect", action="store_true", help="train nothing; tabulate the finished runs")
    ap.add_argument("--previous", default=None,
                    help="an earlier table's .json: its results fill in (marked †) the runs missing here, "
                         "with --collect; only use it for the same zoos (check the deterministic baselines agree)")
    ap.add_argument("--ensembles", action="store_true",
                    help="also report, per learned method with >= 2 seeds run here, the test metrics of the mean "
                         "of the seeds' predictions, and (for methods with a GBT control in CONTROLS) of that mean "
                         "averaged 1:1 with the control's predictions")
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    a = ap.parse_args()
    runs = Path(a.runs_dir)
    runs.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in a.seeds.split(",")]
    jobs = []
    for zoo in a.zoos.split(","):
        methods = METHODS[zoo] if a.methods is None else [m for m in a.methods.split(",") if m in METHODS[zoo]]
        jobs += [(zoo, m, s) for m in methods for s in seeds]
    print(f"{len(jobs)} runs -> {runs}", flush=True)
    with ThreadPoolExecutor(max(1, a.parallel)) as pool:
        results = list(pool.map(lambda j: run_one(*j, runs, a.overrides, a.collect), jobs))
    old_ens: dict = {}
    if a.previous:
        prev_table = json.loads(Path(a.previous).read_text())
        old = prev_table["results"]
        old_ens = prev_table.get("ensembles", {})
        for i, (zoo, m, s) in enumerate(jobs):
            if not results[i]:
                prev = next((r for r in old.get(zoo, {}).get(m, []) if r.get("seed") == s and "tau" in r), None)
                if prev:
                    results[i] = dict(prev, previous=True)
    table: dict = {}
    ensembles: dict = {}
    for (zoo, m, s), r in zip(jobs, results):
        table.setdefault(zoo, {}).setdefault(m, []).append(dict(r, seed=s))
    lines = ["| zoo | method | seeds | test Kendall τ | test R² | test MAE | wall time / run |",
             "|---|---|---|---|---|---|---|"]
    for zoo, rows in table.items():
        best = None
        for m, rs in rows.items():
            ok = [r for r in rs if "tau" in r]
            if not ok:
                lines.append(f"| {ZOO_NAMES[zoo]} | {LABELS.get(m, m)} | 0 | not run | | | |")
                continue
            mark = " †" if any(r.get("previous") for r in ok) else ""
            lines.append(f"| {ZOO_NAMES[zoo]} | {LABELS.get(m, m)}{mark} | {len(ok)} | {fmt([r['tau'] for r in ok])} | "
                         f"{fmt([r['r2'] for r in ok])} | {fmt([r['mae'] for r in ok])} | "
                         f"{np.mean([r['wall'] for r in ok]):.0f} s |")
            if not m.startswith(("hparams", "statnn")):
                mean = float(np.mean([r["tau"] for r in ok]))
                best = max(best or (-1.0, ""), (mean, m))
                for key, combine, what in ((m, ensemble, "mean of the {n} seeds' predictions"),
                                           (m + "+control", blend,
                                            "mean of the {n} seeds, averaged with its GBT control")):
                    if not a.ensembles:
                        break
                    # fall back on the previous table's row when the seeds' predictions are not here
                    e = combine(zoo, m, seeds, runs) or (dict(old_ens[zoo][key], previous=True)
                                                        if key in old_ens.get(zoo, {}) else None)
                    if e:
                        ensembles.setdefault(zoo, {})[key] = e
                        lines.append(f"| {ZOO_NAMES[zoo]} | {LABELS.get(m, m)}, {what.format(n=e['n_models'])}"
                                     f"{' †' if e.get('previous') else ''} | 1 | {e['tau']:.3f} | "
                                     f"{e['r2']:.3f} | {e['mae']:.3f} | — |")
        gbts = [float(np.mean([r["tau"] for r in rows.get(k, []) if "tau" in r]))
                for k in ("statnn_gbt", "statnn_gbt_all") if any("tau" in r for r in rows.get(k, []))]
        if best and gbts:
            gbt = max(gbts)
            print(f"{ZOO_NAMES[zoo]}: best learned {LABELS[best[1]]} tau {best[0]:.3f} vs the better StatNN-GBT "
                  f"{gbt:.3f} (difference {best[0] - gbt:+.3f})")
            control = CONTROLS.get(best[1], "statnn_probes_gbt")
            pr = [r["tau"] for r in rows.get(control, []) if "tau" in r]
            if pr:
                print(f"{ZOO_NAMES[zoo]}: ... and vs gradient boosting on the same probe features + StatNN "
                      f"{np.mean(pr):.3f} (difference {best[0] - float(np.mean(pr)):+.3f})")
    n_test = {zoo: next((r["n_test"] for rs in rows.values() for r in rs if "tau" in r), 0) for zoo, rows in table.items()}
    text = "\n".join(lines)
    print(text)
    subset = a.methods is not None or set(a.zoos.split(",")) != set(METHODS) or a.seeds != "0,1,2"
    if a.out is None and subset:
        print("(a subset of the table: not written; pass --out to write it)")
        return 0
    out = Path(a.out or REPO / "benchmarks" / "results" / "generalization_table")
    out.parent.mkdir(parents=True, exist_ok=True)
    borrowed = any(r.get("previous") for r in results) or any(
        e.get("previous") for rows in ensembles.values() for e in rows.values())
    note = f"\n† from the earlier table {a.previous} (runs not repeated here)." if borrowed else ""
    out.with_suffix(".md").write_text(text + "\n\n" + ", ".join(f"{ZOO_NAMES[z]}: {n} test models"
                                                                 for z, n in n_test.items()) + f"; seeds {seeds}."
                                      + note + "\n")
    out.with_suffix(".json").write_text(json.dumps({"seeds": seeds, "results": table, "ensembles": ensembles,
                                                 "n_test": n_test}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

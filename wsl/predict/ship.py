"""Turn a trained predictor into a shipped one: calibration, family, card.

Usage::

    python -m wsl.predict.ship runs/gs_hnp/predictor --zoo zoos-out/digits-cnn-gs \\
        --name digits-cnn-gs --priority 0 -o models/digits-cnn-gs --command "wsl train ..."

Calibration (:mod:`wsl.predict.calibrate`): the split-conformal half-width ``r``
at ``level`` on ``--calibration-zoo`` (an independent population: the training
zoo's recipe with another ``--seed``; default: the *validation* split, never
test) gives the interval ``prediction ± r``; its coverage of the test split
(and of each ``--coverage-zoo``) is measured and written to the config and card.
Run it on a shipped directory (``-o`` = the predictor) to recalibrate in place.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from wsl.io import atomic_open


def _rows(zoo: Any, split: str) -> Any:
    return zoo.latest().split(split)


def _interval_line(cal: dict[str, Any]) -> str:
    level, n = cal.get("level", 0.9), cal.get("n_calibration", cal.get("n_val"))
    if cal.get("split") == "calibration zoo":
        z = cal.get("calibration_zoo") or {}
        source = (f"{n} networks of an independent calibration zoo (recipe `{z.get('name')}`, seed "
                  f"{z.get('recipe_seed')}; never used in training or model selection)")
    else:
        source = f"the {n} networks of the validation split (also used for early stopping)"
    method = {"split-conformal": "split-conformal half-width", None: "quantile"}.get(cal.get("method"),
                                                                                   cal.get("method"))
    measured = [f"{cal['coverage']['test']:.1%} of the {cal['n']['test']} test networks"] if "coverage" in cal else [
        f"{cal.get('test_coverage', float('nan')):.1%} of the test networks"]
    for name, z in (cal.get("independent_zoos") or {}).items():
        measured.append(f"{cal['coverage'][name]:.1%} of {cal['n'][name]} networks of another independent zoo "
                        f"(seed {z.get('recipe_seed')})")
    return (f"prediction ± {cal.get('abs_residual', float('nan')):.3f}, nominal level {level:.0%}: the {method} "
            f"of the absolute residuals on {source}. Measured coverage: {'; '.join(measured)}.")


def _card(cfg: dict[str, Any], name: str, command: str) -> str:
    m = cfg.get("metrics", {})
    t = cfg.get("training", {})
    cal = cfg.get("calibration", {})
    fam = cfg.get("family", {})
    acc = cfg["input"]["accepts"]
    accepts = ("any architecture wsl can trace, within the family below" if acc["type"] == "any"
               else f"exactly the training architecture (WeightSpace signatures {', '.join(acc['signatures'])})")

    pr = cfg["input"].get("probes")
    parts = [] if not pr else [f"{pr['num']} synthetic ones (kind `{pr.get('kind', 'uniform')}`, seed {pr['seed']})"
                               if pr["num"] else "",
                               f"{pr['invert']} synthesized by inverting the training split's networks "
                               "(wsl.tasks.inversion; stored in the model as `probe_x`)" if pr.get("invert") else ""]
    probes = "" if not pr else (
        f"\n- **Probe features:** also reads the network's outputs on probe inputs of shape {pr.get('input_shape')}: "
        f"{' and '.join(p for p in parts if p)}{', learned during training' if pr.get('learn') else ''}. "
        "No image of any data set is used. The probe features are fused with the weight embedding, so the "
        "predictor needs the network as a function: a checkpoint with its architecture, or a module — a bare "
        "state_dict is refused.")
    dtype = (cfg.get("shipped") or {}).get("dtype", "float32")

    def fmt(split: str, k: str) -> str:
        v = (m.get(split) or {}).get(k)
        return "n/a" if v is None else f"{v:.3f}"

    return f"""---
license: apache-2.0
tags: [weight-space-learning, wsl, generalization-prediction]
library_name: wsl
---
# {name}: predicts a network's test accuracy from its weights

- **Meta-model:** `{cfg['model']['name']}` ({cfg['model'].get('params', {})}), input kind `{cfg['input']['kind']}`;
  weights stored as {dtype} (the metrics below were measured with the stored weights).{probes}
- **Training zoo:** `{t.get('zoo_name')}` (recipe `zoos/{t.get('zoo_name')}.yaml`); target `{cfg['target']['name']}`;
  trained on the zoo's `train` split ({'every recorded epoch of each training model' if t.get('train_checkpoints') == 'all'
  else 'last checkpoint of each model'}; input transform `{cfg['input'].get('transform', 'none')}`), early-stopped on
  `val`, reported on `test` (last checkpoint of each held-out model).
- **Test metrics:** Kendall τ {fmt('test', 'tau')}, R² {fmt('test', 'r2')}, MAE {fmt('test', 'mae')}
  (val: τ {fmt('val', 'tau')}, R² {fmt('val', 'r2')}).
- **Interval:** {_interval_line(cal)}
- **Intended inputs:** {accepts}.
  Training family: input sizes {fam.get('input_sizes')}, outputs {fam.get('output_sizes')}, activations
  {fam.get('activations')}, layer kinds {fam.get('edge_kinds')}, kernel sizes {fam.get('kernel_sizes')},
  depth ≤ {fam.get('max_depth')}, width ≤ {fam.get('max_width')}, parameters {fam.get('num_parameters')}.

## Limits
Predictions are only meaningful for networks trained on the same data set (8×8 sklearn digits) with training
set-ups like the zoo's. Inputs whose input/output sizes differ are refused; other departures from the training
family (new activations, layer kinds, depth, width, kernel sizes) produce out-of-distribution warnings.
The interval's level holds on average for networks like the calibration zoo's, not for each network.

## Reproduce
```
{command}
```
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("predictor")
    ap.add_argument("--zoo", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--priority", type=int, default=100)
    ap.add_argument("--level", type=float, default=0.9, help="nominal level of the interval (default 0.9)")
    ap.add_argument("--calibration-zoo", metavar="DIR", help="independent zoo to calibrate the interval on "
                    "(the training recipe with another --seed); default: the validation split")
    ap.add_argument("--coverage-zoo", metavar="DIR", action="append", default=[],
                    help="further independent zoo on which the interval's coverage is measured (repeatable)")
    ap.add_argument("--command", default="", help="the commands that reproduce this predictor (for the card)")
    ap.add_argument("--half", action="store_true",
                    help="store the weights as float16 (half the size); val/test metrics and calibration are then "
                         "measured again with the stored weights")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # entry point: card metrics and calibration in the bits `wsl predict` gives
    from wsl.io import load_safetensors
    from wsl.predict.calibrate import calibrate
    from wsl.predict.family import describe_family
    from wsl.train.predictor import load_predictor
    from wsl.zoo import load_zoo

    zoo = load_zoo(a.zoo)
    p = load_predictor(a.predictor)
    cfg = json.loads((Path(a.predictor) / "config.json").read_text())
    run_metrics = Path(a.predictor).parent / "metrics.json"
    if run_metrics.is_file():  # how the run selected its training rows (for the card)
        data = json.loads(run_metrics.read_text()).get("config", {}).get("data", {})
        cfg["training"]["train_checkpoints"] = data.get("train_checkpoints", "same")
    zoo_ref = str(cfg["training"].get("zoo") or "")
    if not zoo_ref.startswith("hf://"):  # a path on the training machine is meaningless elsewhere
        cfg["training"]["zoo"] = cfg["training"].get("zoo_name")
    out = Path(a.output)
    if out.resolve() != Path(a.predictor).resolve():
        out.mkdir(parents=True, exist_ok=True)
        if (Path(a.predictor) / "space.json").exists():
            shutil.copyfile(Path(a.predictor) / "space.json", out / "space.json")
        if a.half:
            from wsl.io import atomic_save_safetensors

            sd = load_safetensors(Path(a.predictor) / "model.safetensors")
            atomic_save_safetensors({k: v.half() if v.is_floating_point() else v for k, v in sd.items()},
                                    out / "model.safetensors", metadata={"format": cfg.get("format", "")})
            with atomic_open(out / "config.json", "w", encoding="utf-8") as fh:
                json.dump(cfg, fh, indent=1)
            p = load_predictor(out)  # everything below measures the stored (float16) weights
            from wsl.tasks.metrics import regression_metrics

            for split in ("val", "test"):
                rows = _rows(zoo, split)
                cfg["metrics"][split] = regression_metrics(p.predict_zoo(rows), rows.column(p.target).astype(float))
        else:
            shutil.copyfile(Path(a.predictor) / "model.safetensors", out / "model.safetensors")
    cal_zoo = load_zoo(a.calibration_zoo) if a.calibration_zoo else None
    others = {f"independent{i + 1}" if len(a.coverage_zoo) > 1 else "independent": load_zoo(z)
              for i, z in enumerate(a.coverage_zoo)}
    cfg["calibration"] = calibrate(p, zoo, a.level, cal_zoo, others)
    archs = zoo.column("arch")
    cfg["family"] = describe_family(zoo[int(np.flatnonzero(archs == aid)[0])].space for aid in dict.fromkeys(archs))
    half = a.half or any(v.dtype == torch.float16 for v in load_safetensors(out / "model.safetensors").values())
    command = a.command or (cfg.get("shipped") or {}).get("command", "")
    cfg["shipped"] = {"name": a.name, "priority": a.priority, "dtype": "float16" if half else "float32",
                      "command": command}
    acc = zoo.latest().column(p.target).astype(float)  # the training zoo's distribution (last epochs)
    counts, edges = np.histogram(acc[np.isfinite(acc)], bins=20, range=(0.0, 1.0))
    cfg["target_histogram"] = {"edges": edges.round(4).tolist(), "counts": counts.tolist(),
                               "n": int(counts.sum()), "split": "all"}
    with atomic_open(out / "config.json", "w", encoding="utf-8") as fh:
        json.dump(cfg, fh, indent=1)
    with atomic_open(out / "README.md", "w", encoding="utf-8") as fh:
        fh.write(_card(cfg, a.name, command))
    print(f"shipped {a.name} -> {out}: calibration {cfg['calibration']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

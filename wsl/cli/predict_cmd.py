"""``wsl predict``: predicted test accuracy of checkpoints or of every model in a zoo."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from wsl.errors import WslError


def register(sub: Any) -> None:
    p = sub.add_parser("predict", help="predict the test accuracy of checkpoints from their weights",
                       description="Predict the test accuracy of each checkpoint (or of every model in a zoo) "
                       "with a shipped or trained predictor.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="checkpoints: .safetensors/.pt/.bin, directories, hf://")
    p.add_argument("--zoo", help="predict every model of this zoo (a directory or hf://datasets/...)")
    p.add_argument("--split", default=None, help="with --zoo: only this split (train/val/test)")
    p.add_argument("--predictor", metavar="REF", help="predictor directory, hf:// URI or shipped name "
                   "(default: the shipped predictor that can read the network with the fewest "
                   "out-of-distribution warnings; ties: shipped priority, digits-cnn-gs first)")
    p.add_argument("--arch", metavar="REF", help="architecture of the checkpoints, if they do not carry one")
    p.add_argument("--input-shape", metavar="C,H,W", help="example input shape without batch dim")
    p.add_argument("--json", action="store_true", help="one JSON object per model")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.paths and not args.zoo:
        raise WslError("give checkpoint PATHs or --zoo ZOO")
    import torch

    torch.set_num_threads(1)  # entry point: the same bits as `wsl serve` workers (and `wsl demo`)
    rc = 0
    if args.paths:
        rc = _paths(args)
    if args.zoo:
        rc = max(rc, _zoo(args))
    return rc


def _paths(args: argparse.Namespace) -> int:
    from wsl.predict import predict

    example = None
    if args.input_shape:
        import torch

        from wsl.cli.common import parse_shape

        shape = parse_shape(args.input_shape)
        assert shape is not None
        example = torch.randn(2, *shape)
    failed = 0
    if not args.json:
        print(f"{'checkpoint':<48} {'predicted':>9}  {'interval':<15} {'level (measured)':<18} predictor")
    for path in args.paths:
        try:
            pr = predict(path, args.predictor, arch=args.arch, example_input=example)
        except WslError as e:
            failed += 1
            if args.json:
                print(json.dumps({"path": path, "error": str(e)}))
            else:
                print(f"{path:<48} {'-':>9}  {'':<15} error: {e}")
            continue
        if args.json:
            d = pr.to_json()
            d["path"] = path
            print(json.dumps(d))
        else:
            iv = f"[{pr.interval[0]:.3f}, {pr.interval[1]:.3f}]" if pr.interval else ""
            print(f"{path:<48} {pr.predicted_test_accuracy:>9.4f}  {iv:<15} {interval_level(pr):<18} {pr.predictor}")
            if pr.renamed_tensors:
                pairs = ", ".join(f"{a} -> {b}" for a, b in pr.renamed_tensors.items())
                print(f"{'':<48} read as the predictor's training architecture: {pairs}")
            for w in pr.warnings:
                print(f"{'':<48} warning: {w}")
    if failed and not args.json:
        print(f"{failed} of {len(args.paths)} checkpoint(s) could not be predicted", file=sys.stderr)
    return 2 if failed else 0


def interval_level(pr: Any) -> str:
    """``90% (test 91.2%)``: the interval's nominal level and its measured coverage of the predictor's test split."""
    if pr.interval_level is None:
        return ""
    measured = f" (test {pr.interval_coverage:.1%})" if pr.interval_coverage is not None else ""
    return f"{pr.interval_level:.0%}{measured}"


def _zoo(args: argparse.Namespace) -> int:
    import numpy as np

    from wsl.io import local_path
    from wsl.predict import choose_predictor
    from wsl.predict.api import clipped_interval, tensor_renaming
    from wsl.tasks.metrics import regression_metrics
    from wsl.zoo import load_zoo

    zoo = load_zoo(local_path(args.zoo, repo_type="dataset")).latest()
    if args.split:
        zoo = zoo.split(args.split)
    archs = zoo.column("arch")
    preds = np.full(len(zoo), np.nan)
    chosen = {}
    for aid in dict.fromkeys(archs.tolist()):
        pos = np.flatnonzero(archs == aid)
        space = zoo[int(pos[0])].space
        p, warnings = choose_predictor(space, args.predictor)
        chosen[aid] = p
        stacked, renamed = zoo.stacked(pos), tensor_renaming(p, space)
        if renamed:
            space, stacked = p.space, {renamed.get(k, k): v for k, v in stacked.items()}
        preds[pos] = p.predict(space, stacked, probes=p.zoo_probes(zoo[pos]))
        for w in warnings:
            print(f"warning ({aid}): {w}", file=sys.stderr)
    true = zoo.column("test_accuracy").astype(float)
    inside = []
    if not args.json:
        print(f"{'model':<10} {'predicted':>9}  {'interval':<15} {'true':>6}  predictor")
    for i in range(len(zoo)):
        row = zoo[i].metadata
        p = chosen[row["arch"]]
        half = (p.config.get("calibration") or {}).get("abs_residual")
        iv = None if half is None else clipped_interval(float(preds[i]), float(half), True)
        if iv is not None and np.isfinite(true[i]):
            inside.append(iv[0] <= true[i] <= iv[1])
        d = {"id": row["row"], "model_id": row["model_id"], "predicted_test_accuracy": float(np.clip(preds[i], 0, 1)),
             "interval": None if iv is None else list(iv), "test_accuracy": row.get("test_accuracy"),
             "predictor": getattr(p, "name", "")}
        if args.json:
            print(json.dumps(d))
        else:
            ivs = "" if iv is None else f"[{iv[0]:.3f}, {iv[1]:.3f}]"
            print(f"{row['model_id']:<10} {d['predicted_test_accuracy']:>9.4f}  {ivs:<15} {true[i]:>6.3f}  "
                  f"{d['predictor']}")
    ok = np.isfinite(true)
    m = regression_metrics(preds[ok], true[ok]) if ok.sum() > 2 else {}
    summary = f"{len(zoo)} models; Kendall tau {m.get('tau', float('nan')):.3f}, R2 {m.get('r2', float('nan')):.3f}, " \
              f"MAE {m.get('mae', float('nan')):.3f} against recorded test accuracy"
    if inside:
        summary += f"; the interval holds it for {np.mean(inside):.1%} ({sum(inside)} of {len(inside)})"
    print(summary, file=sys.stderr if args.json else sys.stdout)
    return 0

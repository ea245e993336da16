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
                   "(default: the first shipped predictor that covers the architecture)")
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
        print(f"{'checkpoint':<48} {'predicted':>9}  {'interval':<15} predictor")
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
            print(f"{path:<48} {pr.predicted_test_accuracy:>9.4f}  {iv:<15} {pr.predictor}")
            for w in pr.warnings:
                print(f"{'':<48} warning: {w}")
    if failed and not args.json:
        print(f"{failed} of {len(args.paths)} checkpoint(s) could not be predicted", file=sys.stderr)
    return 2 if failed else 0


def _zoo(args: argparse.Namespace) -> int:
    import numpy as np

    from wsl.io import local_path
    from wsl.predict import choose_predictor
    from wsl.tasks.metrics import regression_metrics
    from wsl.zoo import load_zoo

    zoo = load_zoo(local_path(args.zoo, repo_type="dataset")).latest()
    if args.split:
        zoo = zoo.split(args.split)
    archs = zoo.column("arch")
    preds = np.full(len(zoo), np.nan)
    names = {}
    for aid in dict.fromkeys(archs.tolist()):
        pos = np.flatnonzero(archs == aid)
        space = zoo[int(pos[0])].space
        p, warnings = choose_predictor(space, args.predictor)
        names[aid] = getattr(p, "name", "")
        preds[pos] = p.predict(space, zoo.stacked(pos), probes=p.zoo_probes(zoo[pos]))
        for w in warnings:
            print(f"warning ({aid}): {w}", file=sys.stderr)
    true = zoo.column("test_accuracy").astype(float)
    for i in range(len(zoo)):
        row = zoo[i].metadata
        if args.json:
            print(json.dumps({"id": row["row"], "model_id": row["model_id"], "predicted_test_accuracy":
                              float(np.clip(preds[i], 0, 1)), "test_accuracy": row.get("test_accuracy"),
                              "predictor": names[row["arch"]]}))
    ok = np.isfinite(true)
    m = regression_metrics(preds[ok], true[ok]) if ok.sum() > 2 else {}
    summary = f"{len(zoo)} models; Kendall tau {m.get('tau', float('nan')):.3f}, R2 {m.get('r2', float('nan')):.3f}, " \
              f"MAE {m.get('mae', float('nan')):.3f} against recorded test accuracy"
    print(summary, file=sys.stderr if args.json else sys.stdout)
    return 0

"""``wsl merge merge.yaml -o merged.safetensors``: merge networks as a YAML file describes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wsl.cli.common import print_json
from wsl.errors import WslError


def register(sub: Any) -> None:
    p = sub.add_parser("merge", help="merge several networks of one architecture (mean, aligned mean, TIES, ...)",
                       description="Merge the networks a YAML file lists with the method it names "
                       "(mean, aligned_mean, barycentre, task_arithmetic, ties, dare, slerp). "
                       "See wsl/align/merge_config.py for the format.")
    p.add_argument("config", help="merge YAML (method, parameters, models, optional base and arch)")
    p.add_argument("-o", "--output", required=True, help="output .safetensors (carries the architecture)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_merge_cmd)


def run_merge_cmd(args: argparse.Namespace) -> int:
    from wsl.align.merge_config import load_merge_config, run_merge
    from wsl.io import save_module

    out = Path(args.output)
    if out.suffix.lower() != ".safetensors":
        raise WslError(f"-o {out}: the merged model is written as safetensors; name it *.safetensors")
    cfg = load_merge_config(args.config)
    module, merged, report = run_merge(cfg)
    module.load_state_dict(merged)
    save_module(module, out)
    report["output"] = str(out)
    if args.json:
        print_json(report)
    else:
        extra = f", {report['iterations']} iterations" if "iterations" in report else ""
        print(f"merged {report['models']} models with {report['method']}{extra}; wrote {out}")
    return 0

"""``wsl push``: upload a trained predictor to a Hugging Face model repository.

``wsl zoo push`` (zoos to dataset repositories) is registered by
:func:`wsl.hub.push.register_push` in the ``wsl zoo`` group. Pulling needs no
command: every path argument accepts ``hf://`` URIs.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    from wsl.hub.push import add_push_args

    p = sub.add_parser("push", help="upload a predictor or a NeuMeta run to a Hugging Face model repository",
                       description="Upload a predictor written by `wsl train` (config.json, model.safetensors, "
                       "space.json) with a generated model card (training zoo, metrics, intended inputs); or a "
                       "run directory of `wsl hyper train` (hyper.safetensors, base.safetensors, config.json, "
                       "metrics.json, plots) with a model card (accuracy per width).")
    p.add_argument("path", help="predictor directory (OUTPUT/predictor of `wsl train`) or a `wsl hyper train` run")
    p.add_argument("repo", metavar="hf://ORG/NAME", help="destination model repository (optionally /SUBFOLDER)")
    add_push_args(p, "model")
    p.set_defaults(func=run_push)


def run_push(args: argparse.Namespace) -> int:
    from pathlib import Path

    from wsl.hub.push import push_hyper, push_predictor

    push = push_hyper if (Path(args.path) / "hyper.safetensors").is_file() else push_predictor
    report = push(args.path, args.repo, private=args.private, revision=args.revision,
                  commit_message=args.message, license=args.license)
    print(f"pushed {args.path} to {report.uri}: {report.files} files ({report.commit_url})")
    return 0

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

    p = sub.add_parser("push", help="upload a predictor directory to a Hugging Face model repository",
                       description="Upload a predictor written by `wsl train` (config.json, model.safetensors, "
                       "space.json) with a generated model card (training zoo, metrics, intended inputs).")
    p.add_argument("path", help="predictor directory (OUTPUT/predictor of `wsl train`)")
    p.add_argument("repo", metavar="hf://ORG/NAME", help="destination model repository (optionally /SUBFOLDER)")
    add_push_args(p, "model")
    p.set_defaults(func=run_push)


def run_push(args: argparse.Namespace) -> int:
    from wsl.hub.push import push_predictor

    report = push_predictor(args.path, args.repo, private=args.private, revision=args.revision,
                            commit_message=args.message, license=args.license)
    print(f"pushed {args.path} to {report.uri}: {report.files} files ({report.commit_url})")
    return 0

"""The ``wsl`` command line.

Each subcommand lives in its own module under :mod:`wsl.cli` and exposes
``register(subparsers)``; :data:`COMMAND_MODULES` lists them. Errors derived
from :class:`~wsl.errors.WslError` print one line and exit with status 2;
``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import warnings
from typing import Sequence

COMMAND_MODULES = (
    "wsl.cli.inspect_cmd",
    "wsl.cli.zoo_cmd",
    "wsl.cli.train_cmd",
    "wsl.cli.predict_cmd",
    "wsl.cli.align_cmd",
    "wsl.cli.merge_cmd",
    "wsl.cli.hub_cmd",
    "wsl.cli.serve_cmd",
    "wsl.cli.demo_cmd",
    "wsl.cli.subspace_cmd",
    "wsl.cli.hyper_cmd",
    "wsl.cli.inr_cmd",
)

EXIT_USER_ERROR = 2
EXIT_INTERNAL = 3


def build_parser() -> argparse.ArgumentParser:
    from wsl import __version__

    parser = argparse.ArgumentParser(
        prog="wsl",
        description="Weight-space learning: inspect networks as parameter graphs, build model zoos, "
        "train meta-models, predict generalization from weights.",
    )
    parser.add_argument("--version", action="version", version=f"wsl {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*torch-scatter.*|.*torch-sparse.*")
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    from wsl.errors import WslError

    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra:  # `key=value` overrides may also follow options (wsl train CFG --output D a.b=1)
            if isinstance(getattr(args, "overrides", None), list) and all("=" in e and not e.startswith("-")
                                                                          for e in extra):
                args.overrides.extend(extra)
            else:
                parser.parse_args(argv)  # reports the unrecognized arguments and exits
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USER_ERROR if args.command is None and argv else 0
        rc = args.func(args)
        return int(rc or 0)
    except WslError as e:
        if debug:
            raise
        print(f"wsl: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("wsl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # a bug in wsl, not a user error
        if debug:
            raise
        print(f"wsl: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL

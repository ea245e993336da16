"""``wsl zoo compress ZOO (--rank k | --variance q) -o OUT``: a zoo stored as per-tensor bases plus coefficients."""

from __future__ import annotations

import argparse
from typing import Any

from wsl.io import local_path


def register_compress(zsub: Any) -> None:
    """Add ``compress`` to the ``wsl zoo`` subcommands."""
    c = zsub.add_parser("compress", help="store a zoo as one subspace basis per architecture plus coefficients",
                        description="Fit, per architecture and tensor, the mean and the top principal directions "
                        "of the zoo's rows (every checkpoint, or one split's), and write every row as its "
                        "coefficients (format wsl.zoo-compressed/1). wsl.load_zoo reads the result like any zoo; "
                        "rows are reconstructed on access. Decompress with: wsl zoo merge OUT ZOO_C.")
    c.add_argument("zoo", help="input zoo directory (or hf:// dataset)")
    how = c.add_mutually_exclusive_group(required=True)
    how.add_argument("--rank", type=int, help="directions kept per tensor (at most the tensor's size)")
    how.add_argument("--variance", type=float, help="per tensor, the fewest directions explaining this fraction "
                     "of its variance, in (0, 1]")
    c.add_argument("-o", "--output", required=True, help="output directory (must not exist or be empty)")
    c.add_argument("--split", choices=("train", "val", "test"), default=None,
                   help="fit the bases on this split's rows only (default: every row); every row is stored")
    c.add_argument("--quiet", action="store_true", help="no progress bars")
    c.set_defaults(func=run_compress)


def run_compress(args: argparse.Namespace) -> int:
    from wsl.cli.common import format_bytes as _size
    from wsl.subspace.compress import compress

    zoo = compress(local_path(args.zoo, repo_type="dataset"), args.output, rank=args.rank, variance=args.variance,
                   split=args.split, progress=not args.quiet)
    info = zoo.card["compression"]
    before = info["source"]["weight_bytes"]
    basis = sum(b["bytes"] for b in info["bases"].values())
    coef = sum(s["bytes"] for s in zoo.card["shards"])
    after = basis + coef
    ranks = sorted({t["rank"] for b in info["bases"].values() for t in b["tensors"].values()})
    print(f"wrote {args.output}: {len(zoo):,} rows of {len(zoo.model_ids()):,} models; ranks per tensor "
          f"{ranks[0]}..{ranks[-1]}" if ranks else f"wrote {args.output}: {len(zoo):,} rows")
    print(f"  weights {_size(before)} ({before:,} B) -> basis {_size(basis)} + coefficients {_size(coef)} = "
          f"{_size(after)} ({after:,} B); ratio {before / max(after, 1):.2f}x")
    return 0

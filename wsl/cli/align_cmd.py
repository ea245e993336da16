"""``wsl align REF MODEL -o OUT.safetensors``: permute MODEL's units into REF's order."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wsl.cli.common import add_model_args, load_for_cli, print_json
from wsl.errors import SpaceMismatchError, WslError


def register(sub: Any) -> None:
    p = sub.add_parser("align", help="permute a network's units to match a reference (weight/activation matching)",
                       description="Find the permutation of MODEL's hidden units that brings it closest to REF "
                       "(same architecture) and write the permuted MODEL: the same function, REF's unit order.")
    p.add_argument("ref", help="reference checkpoint (.safetensors, .pt, directory, hf://...)")
    p.add_argument("model", help="checkpoint to permute (same architecture as REF)")
    p.add_argument("-o", "--output", required=True, help="output .safetensors (carries the architecture)")
    add_model_args(p)
    p.add_argument("--method", choices=("weight", "activation"), default="weight",
                   help="weight: match weights (no data); activation: correlate unit activations on --data")
    p.add_argument("--data", default=None, help="built-in data set for --method activation: digits or mnist1d "
                   "(the training inputs are used)")
    p.add_argument("--samples", type=int, default=2048, help="inputs used by --method activation (default 2048)")
    p.add_argument("--passes", type=int, default=100, help="maximum coordinate-descent passes (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the group order (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_align)


def _batches(name: str, samples: int) -> list[Any]:
    from wsl.zoo.data import load_dataset

    x = load_dataset(name).x_train[:samples]
    return [x[i:i + 256] for i in range(0, x.shape[0], 256)]


def run_align(args: argparse.Namespace) -> int:
    from wsl.align import activation_matching, weight_matching
    from wsl.align.space_match import first_difference

    out = Path(args.output)
    if out.suffix.lower() != ".safetensors":
        raise WslError(f"-o {out}: the aligned model is written as safetensors; name it *.safetensors")
    ref, ref_sd, space = load_for_cli(args.ref, args.arch, args.input_shape, args.input_dtype)
    model, model_sd, model_space = load_for_cli(args.model, args.arch, args.input_shape, args.input_dtype)
    assert ref_sd is not None and model_sd is not None
    diff = first_difference(space, model_space)
    if diff is not None:
        raise SpaceMismatchError(f"{args.ref} and {args.model} have different weight spaces: {diff}")
    if args.method == "activation":
        if not args.data:
            raise WslError("--method activation needs --data (digits or mnist1d)")
        result = activation_matching(ref, model, _batches(args.data, args.samples), space,
                                     max_passes=args.passes, seed=args.seed)
    else:
        result = weight_matching(ref_sd, model_sd, space, max_passes=args.passes, seed=args.seed)
    aligned = result.apply(model_sd)
    _write(model, aligned, out)
    summary = {"ref": args.ref, "model": args.model, "output": str(out), "method": args.method,
               **result.summary()}
    if args.json:
        print_json(summary)
    else:
        print(f"aligned {args.model} to {args.ref} ({args.method} matching, {result.passes} pass{'es' if result.passes != 1 else ''}, "
              f"{'converged' if result.converged else 'not converged'}; {summary['groups_moved']} groups moved)")
        print(f"  inner product <ref, model>: {result.objective_before:.6g} -> {result.objective_after:.6g}")
        print(f"  distance ||ref - model||:  {result.distance_before:.6g} -> {result.distance_after:.6g}")
        print(f"wrote {out}")
    return 0


def _write(module: Any, state: dict, out: Path) -> None:
    """Save with the architecture (the module was built from a description, so it describes itself)."""
    from wsl.io import save_module

    module.load_state_dict(state)
    save_module(module, out)

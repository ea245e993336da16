"""``wsl zoo``: ``info``, ``show``, ``merge``, ``align``, ``compress`` (plus ``generate``/``convert`` when installed)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from typing import Any

from wsl.cli.common import format_bytes as _size
from wsl.cli.common import print_json
from wsl.cli.zoo_compress_cmd import register_compress
from wsl.errors import ZooFormatError
from wsl.io import local_path
from wsl.zoo.summary import summarize

OPTIONAL_SUBCOMMANDS = (("wsl.zoo.generate", "register_generate"), ("wsl.zoo.readers", "register_convert"),
                        ("wsl.hub.push", "register_push"))  # wsl.hub hook: `wsl zoo push`


def register(sub: Any) -> None:
    """Create the ``zoo`` command group and its subcommands."""
    p = sub.add_parser("zoo", help="build, convert, inspect and merge model zoos",
                       description="Model zoos in the native wsl.zoo/1 format (see wsl.zoo.format).")
    zsub = p.add_subparsers(dest="zoo_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda args: _help(p))

    i = zsub.add_parser("info", help="summarize a zoo: rows, models, splits, architectures, metrics",
                        description="Summarize a zoo without reading any weights (unless --verify).")
    i.add_argument("path", help="zoo directory or hf://datasets/...")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.add_argument("--verify", action="store_true", help="also validate and checksum every shard")
    i.set_defaults(func=run_info)

    s = zsub.add_parser("show", help="print one row's metadata and its tensors' shapes and statistics",
                        description="Show one row: ID is a row number, or a model_id (its last-epoch row).")
    s.add_argument("path", help="zoo directory or hf://datasets/...")
    s.add_argument("id", help="row number or model_id")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.set_defaults(func=run_show)

    m = zsub.add_parser("merge", help="join zoos (e.g. parts from generate --shard i/n) into one",
                        description="Merge zoos of the same name/dataset/recipe into OUT (rows renumbered).")
    m.add_argument("out", help="output directory (must not exist or be empty)")
    m.add_argument("inputs", nargs="+", help="input zoo directories")
    m.add_argument("--copy", action="store_true", help="copy shard files instead of hard-linking them")
    m.add_argument("--no-verify", action="store_true", help="skip checksumming the input shards")
    m.set_defaults(func=run_merge)

    a = zsub.add_parser("align", help="write a copy of a zoo with every model aligned to one reference",
                        description="Align every model of ZOO (weight matching on its last checkpoint; the same "
                        "permutation for all its checkpoints) to one reference and write the result to OUT. "
                        "Functions, metadata and splits are unchanged; rerun to resume.")
    a.add_argument("zoo", help="input zoo directory (or hf:// dataset)")
    a.add_argument("-o", "--output", required=True, help="output zoo directory")
    a.add_argument("--reference", default="mean", help="'mean' (the iterated barycentre, default) or a row number")
    a.add_argument("--iterations", type=int, default=5, help="barycentre iterations at most (default 5)")
    a.set_defaults(func=run_align_zoo)

    register_compress(zsub)

    for module, fn in OPTIONAL_SUBCOMMANDS:
        if importlib.util.find_spec(module) is not None:
            getattr(importlib.import_module(module), fn)(zsub)


def _help(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 0


def _open(path: str, verify: str = "lazy") -> Any:
    from wsl.zoo import load_zoo

    return load_zoo(local_path(path, repo_type="dataset"), verify=verify)


def run_info(args: argparse.Namespace) -> int:
    zoo = _open(args.path, "eager" if args.verify else "lazy")
    info = summarize(zoo)
    if args.verify:
        info["verified"] = True
    if args.json:
        print_json(info)
        return 0
    print(f"zoo {info['name']!r} ({info['format']}, version {info['version']}) at {info['path']}")
    if info["description"]:
        print(f"  {info['description']}")
    ds = info["dataset"].get("name") if isinstance(info["dataset"], dict) else None
    print(f"  rows {info['num_rows']:,}   models {info['num_models']:,}   shards {info['num_shards']:,}   "
          f"disk {_size(info['disk_bytes'])}" + (f"   dataset {ds}" if ds else ""))
    comp = info.get("compression")
    if comp:
        fit = comp["fit"]
        how = f"rank {fit.get('rank')}" if fit.get("rank") is not None else f"variance {fit.get('variance')}"
        print(f"  compressed ({comp['method']}, {how}): basis {_size(comp['basis_bytes'])} + coefficients "
              f"{_size(comp['coefficient_bytes'])}; weights were {_size(comp['source']['weight_bytes'])} "
              f"(ratio {comp['ratio']:.2f}x)")
    print("  splits   " + ",  ".join(f"{k} {v['rows']:,} rows / {v['models']:,} models"
                                     for k, v in info["splits"].items()))
    print("  architectures")
    for a in info["architectures"]:
        print(f"    {a['id']:<8} {str(a['kind']):<24} {a['num_parameters']:>12,} params  {a['rows']:>8,} rows  "
              f"{a['models']:>7,} models")
    if info["metrics"]:
        print("  metrics" + " " * 18 + "count      min      q25   median      q75      max")
        for name, m in info["metrics"].items():
            if m["count"]:
                print(f"    {name:<22} {m['count']:>7,} " + " ".join(f"{m[k]:>8.4g}" for k in
                                                                     ("min", "q25", "median", "q75", "max")))
    if args.verify:
        print("  all shards verified (headers and sha256)")
    return 0


def _find(zoo: Any, ident: str) -> Any:
    if ident.lstrip("-").isdigit():
        i = int(ident)
        if not -len(zoo) <= i < len(zoo):
            raise ZooFormatError(f"{zoo.root}: row {i} out of range (the zoo has {len(zoo)} rows)")
        return zoo[i]
    part = zoo.filter(model_id=ident) if len(zoo) else zoo
    if not len(part):
        raise ZooFormatError(f"{zoo.root}: no row number or model_id {ident!r}")
    return part.latest()[0]


def run_show(args: argparse.Namespace) -> int:
    import torch

    zoo = _open(args.path)
    model = _find(zoo, args.id)
    tensors = []
    for name, t in model.state_dict().items():
        f = t.double()
        stats = {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""),
                 "numel": t.numel()}
        if t.numel():
            finite = torch.isfinite(f)
            stats.update(mean=float(f.mean()), std=float(f.std()) if t.numel() > 1 else 0.0,
                         min=float(f.min()), max=float(f.max()), norm=float(f.norm()),
                         nonfinite=int((~finite).sum()))
        tensors.append(stats)
    if args.json:
        print_json({"metadata": model.metadata, "arch": model.arch, "tensors": tensors})
        return 0
    print(f"row {model.row} of {zoo.root}")
    for k, v in model.metadata.items():
        print(f"  {k:<16} {v}")
    print(f"  {'tensor':<28} {'shape':<18} {'dtype':<8} {'mean':>10} {'std':>10} {'min':>10} {'max':>10}")
    for s in tensors:
        vals = " ".join(f"{s[k]:>10.4g}" for k in ("mean", "std", "min", "max")) if s["numel"] else ""
        print(f"  {s['name']:<28} {str(s['shape']):<18} {s['dtype']:<8} {vals}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from wsl.zoo.merge import merge_zoos

    zoo = merge_zoos(args.out, [local_path(p, repo_type="dataset") for p in args.inputs],
                     link=not args.copy, verify=not args.no_verify)
    print(f"wrote {args.out}: {len(zoo):,} rows, {len(zoo.model_ids()):,} models, "
          f"{len(zoo.card['shards']):,} shards from {len(args.inputs)} zoos")
    return 0


def run_align_zoo(args: argparse.Namespace) -> int:
    from wsl.align.zoo_align import align_zoo

    ref = args.reference.strip()
    zoo = align_zoo(local_path(args.zoo, repo_type="dataset"), args.output, reference=ref,
                    max_iterations=args.iterations)
    print(f"wrote {args.output}: {len(zoo):,} rows of {len(zoo.model_ids()):,} models, aligned to "
          f"{'their barycentre' if ref == 'mean' else 'row ' + ref}")
    return 0

"""``wsl subspace analyze|fit|project``: a zoo's spectra beside honest nulls, bases, projections."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from wsl.cli.common import print_json
from wsl.errors import ConfigError, WslError


def _source_args(p: Any) -> None:
    p.add_argument("sources", nargs="+", metavar="SRC", help="a zoo folder, a folder of checkpoints, or checkpoint "
                   "files / hf:// URIs of one architecture")
    p.add_argument("--arch", metavar="REF", help="architecture of checkpoints (registered name, pkg.mod:factory, "
                   "JSON): needed for the init null and alignment of checkpoints")
    p.add_argument("--zoo-arch", metavar="ID", help="which architecture of a zoo with several (see wsl zoo info)")
    p.add_argument("--split", default=None, help="a zoo's split (train, val, test); default: every model")
    p.add_argument("--epochs", default="latest", help="a zoo's rows: latest (default), all, or an epoch number")
    p.add_argument("--limit", type=int, default=None, help="use the first N models only")


def register(sub: Any) -> None:
    p = sub.add_parser("subspace", help="universal-subspace analysis: spectra vs nulls, bases, projection",
                       description="Per-tensor and per-layer spectra of a zoo beside three nulls (init, "
                       "Marchenko-Pastur, shuffled), shared subspaces, bases and projections.")
    ss = p.add_subparsers(dest="subspace_command", metavar="ACTION")

    a = ss.add_parser("analyze", help="spectra of a zoo's tensors and layers beside the nulls; writes a report",
                      description="Write report.json, summary.md and figures: per tensor and layer the explained-"
                      "variance curve, effective rank and rank for 50/90/99%% of the data and of each null, the "
                      "excess over each null, split-half sharedness and the mode-wise view; with and without "
                      "alignment.")
    _source_args(a)
    a.add_argument("-o", "--output", required=True, metavar="DIR", help="report folder")
    a.add_argument("--nulls", default="init,mp,shuffled", help="comma-separated: init, mp, shuffled (or none)")
    a.add_argument("--align", choices=("none", "yes", "both"), default="both",
                   help="also analyse the models aligned to their barycentre (yes and both: both views; default)")
    a.add_argument("--seed", type=int, default=0, help="seed of the shuffled null, the halves and init nets")
    a.add_argument("--accuracy", action="store_true",
                   help="zoos: also the test accuracy the models keep at each k vs the compression ratio, with "
                   "float16/int8 beside and a leave-one-out (writes accuracy.png, loo.png)")
    a.add_argument("--loo", type=int, default=50, metavar="N",
                   help="with --accuracy: held-out models for the exact leave-one-out (0: none; default 50)")
    a.add_argument("--json", action="store_true", help="print a compact JSON summary")
    a.set_defaults(func=run_analyze)

    f = ss.add_parser("fit", help="fit a basis (per-tensor mean + top directions) and write it",
                      description="Fit a per-tensor basis: the mean and the top principal directions of every "
                      "tensor (a fixed --rank, or as many as explain --variance).")
    _source_args(f)
    f.add_argument("-o", "--output", required=True, metavar="DIR", help="basis folder")
    how = f.add_mutually_exclusive_group(required=True)
    how.add_argument("--rank", type=int, help="directions per tensor")
    how.add_argument("--variance", type=float, help="fraction of each tensor's variance to keep, e.g. 0.9")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(func=run_fit)

    j = ss.add_parser("project", help="project a model onto a basis: coefficients and reconstruction error",
                      description="Coefficients c = V^T (theta - mean) of MODEL per tensor, the relative "
                      "reconstruction error per tensor and overall, next to the mean-only projection's.")
    j.add_argument("model", metavar="MODEL", help="checkpoint (.safetensors, .pt, directory, hf://...)")
    j.add_argument("--basis", required=True, metavar="DIR", help="a basis written by wsl subspace fit")
    j.add_argument("-o", "--output", default=None, metavar="FILE", help="write the reconstruction (.safetensors)")
    j.add_argument("--coefficients", default=None, metavar="FILE", help="write the coefficients (.safetensors)")
    j.add_argument("--arch", metavar="REF", help="architecture to store with the reconstruction (default: the "
                   "checkpoint's own, else the basis's)")
    j.add_argument("--json", action="store_true", help="print one JSON object")
    j.set_defaults(func=run_project)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _epochs(text: str) -> str | int:
    if text in ("latest", "all"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise WslError(f"--epochs {text!r}: expected latest, all or an epoch number") from None
    if value < 0:
        raise WslError(f"--epochs {text!r}: an epoch number is >= 0")
    return value


def _open(args: argparse.Namespace) -> Any:
    """The :class:`Source` the options describe (``--arch`` for checkpoints, ``--zoo-arch`` for a zoo)."""
    from wsl.io import local_path
    from wsl.subspace.sources import open_source

    if args.limit is not None and args.limit < 2:
        raise WslError(f"--limit {args.limit}: a subspace needs at least 2 models")
    is_zoo = len(args.sources) == 1 and (Path(local_path(args.sources[0])) / "zoo.json").is_file()
    if is_zoo and args.arch:
        raise WslError("--arch is for checkpoints; a zoo knows its architectures (choose one with --zoo-arch ID)")
    if not is_zoo and args.zoo_arch:
        raise WslError("--zoo-arch is for a zoo; for checkpoints give --arch REF")
    if not is_zoo and (args.split or args.epochs != "latest"):
        raise WslError("--split and --epochs select rows of a zoo; the sources are checkpoints")
    return open_source(args.sources, arch=args.zoo_arch if is_zoo else args.arch, split=args.split,
                       epochs=_epochs(args.epochs), limit=args.limit)


def _nulls(text: str) -> list[str]:
    if text.strip().lower() in ("", "none"):
        return []
    return [t.strip() for t in text.split(",") if t.strip()]


def _line(entry: dict[str, Any]) -> str:
    """One layer's numbers: data first, nulls in parentheses."""
    others = [k for k in entry["effective_rank"] if k != "data"]

    def grp(key: str, fmt: str) -> str:
        rest = ", ".join(f"{k} {entry[key][k]:{fmt}}" for k in others)
        return f"{entry[key]['data']:{fmt}}" + (f" ({rest})" if rest else "")

    text = (f"effective rank {grp('effective_rank', '.3g')}; rank for 90% {grp('rank_for_0.9', 'd')}; "
            f"top-1 {grp('top1', '.3f')}")
    sh = entry.get("split_half")
    if sh and sh.get("data") is not None:
        nulls = ", ".join(f"{k} {v:.3f}" for k, v in sh.items() if k not in ("k", "data", "random") and v is not None)
        text += f"; split-half overlap k={sh['k']} {sh['data']:.3f} ({nulls + ', ' if nulls else ''}random " \
                f"{sh['random']:.3g})"
    return text


def run_analyze(args: argparse.Namespace) -> int:
    from wsl.subspace.analyze import analyze
    from wsl.subspace.distributed import cleanup, init_from_env, is_main
    from wsl.subspace.report import compact_summary, write_report

    init_from_env()  # under torchrun: Gram blocks are shared out across the ranks; else a no-op
    src = _open(args)
    if args.loo < 0:
        raise ConfigError(f"--loo must be >= 0, got {args.loo}")
    report = analyze(src, nulls=_nulls(args.nulls), aligned=args.align, seed=args.seed, accuracy=args.accuracy,
                     loo_models=args.loo)
    if not is_main():  # every rank holds the same report; one writes it
        cleanup()
        return 0
    paths = write_report(report, args.output)
    cleanup()
    summary = compact_summary(report)
    summary["output"] = str(args.output)
    if args.json:
        print_json(summary)
        return 0
    print(f"subspace analysis of {report['source']}: {report['n_models']} models, {len(report['tensors'])} tensors "
          f"in {len(report['layers'])} layers, {report['seconds']:.1f} s")
    for view, part in (("", summary), ("aligned ", summary.get("aligned"))):
        if part is None:
            continue
        if "skipped" in part:
            print(f"  {view}analysis skipped: {part['skipped']}")
            continue
        for layer, entry in part["layers"].items():
            print(f"  {view}layer {layer} (P={entry['n_params']}): {_line(entry)}")
    acc = summary.get("accuracy")
    if acc is not None:
        if "skipped" in acc:
            print(f"  accuracy skipped: {acc['skipped']}")
        for m in acc.get("methods", []):
            loo = "" if m.get("loo_mean_diff") is None else f", held out {100 * m['loo_mean_diff']:+.2f} pts"
            print(f"  accuracy {m['method']}{'' if m['k'] is None else ' k=' + str(m['k'])}: ratio {m['ratio']:.1f}, "
                  f"{100 * m['accuracy']:.2f}% ({100 * m['mean_diff']:+.2f} pts{loo})")
    print(f"wrote {paths['report']}, {paths['summary']}" + (f" and {len(paths['figures'])} figures"
                                                             if paths["figures"] else ""))
    return 0


def _arch_of(src: Any) -> Any:
    """What rebuilds the source's architecture: a zoo's description, --arch, or a checkpoint's own metadata."""
    from wsl.io import read_checkpoint_metadata

    if src.zoo is not None:  # pooled architectures (one tensor layout): the first one rebuilds the module
        return src.zoo.architectures[src.info["arch"]]["arch"]
    stack = src.stack
    paths = getattr(stack, "paths", None)
    if paths:
        meta = read_checkpoint_metadata(paths[0]).get("wsl_arch")
        if meta:
            return json.loads(meta)
    return None


def run_fit(args: argparse.Namespace) -> int:
    from wsl.subspace.basis import fit

    src = _open(args)
    arch = args.arch if args.arch else _arch_of(src)
    info = {"source": [str(s) for s in args.sources], "source_kind": src.info.get("kind"),
            "zoo_arch": src.info.get("arch") if src.zoo is not None else None, "split": args.split,
            "epochs": args.epochs, "limit": args.limit, "arch": arch}
    basis = fit(src.stack, rank=args.rank, variance=args.variance, progress=True, info=info)
    out = basis.save(args.output)
    stored = basis.numel() * 4
    size = (out / "basis.safetensors").stat().st_size
    ranks = {n: basis.rank(n) for n in basis.names}
    result = {"output": str(out), "n_models": len(src.stack), "ranks": ranks, "numbers": basis.numel(),
              "bytes": size, "zoo_bytes_float32": sum(src.stack.numel(n) for n in src.stack.names) * 4 * len(src.stack)}
    if args.json:
        print_json(result)
        return 0
    print(f"fitted a basis on {len(src.stack)} models of {src.label}")
    for n, k in ranks.items():
        print(f"  {n:<32} shape {str(list(basis.shapes[n])):<18} rank {k}")
    print(f"basis: {basis.numel():,} numbers ({stored:,} bytes as float32); basis.safetensors {size:,} bytes")
    print(f"wrote {out}")
    return 0


def _module_for(model: str, arch: str | None, basis: Any) -> Any:
    from wsl.io import read_checkpoint_metadata, resolve_arch

    if arch:
        return resolve_arch(arch)
    meta = read_checkpoint_metadata(model).get("wsl_arch")
    if meta:
        return resolve_arch(meta)
    if basis.info.get("arch") is not None:
        return resolve_arch(basis.info["arch"])
    return None


def run_project(args: argparse.Namespace) -> int:
    import torch

    from wsl.io import atomic_save_safetensors, load_state_dict, local_path, save_module, save_state_dict
    from wsl.subspace.basis import load_basis

    for flag, path in (("-o", args.output), ("--coefficients", args.coefficients)):
        if path is not None and Path(path).suffix.lower() != ".safetensors":
            raise WslError(f"{flag} {path}: written as safetensors; name it *.safetensors")
    basis = load_basis(args.basis)
    model = local_path(args.model)
    sd = load_state_dict(model)
    coeffs = basis.project(sd, where=str(args.model))
    recon = basis.reconstruct(coeffs)
    per, num, den, num0 = {}, 0.0, 0.0, 0.0
    for n in basis.names:
        x = sd[n].to(torch.float64).reshape(-1)
        err = float((recon[n].to(torch.float64).reshape(-1) - x).norm())
        err0 = float((basis.means[n].to(torch.float64) - x).norm())
        norm = float(x.norm())
        per[n] = {"rank": basis.rank(n), "relative_error": err / norm if norm else err,
                  "mean_only_relative_error": err0 / norm if norm else err0}
        num, num0, den = num + err ** 2, num0 + err0 ** 2, den + norm ** 2
    result = {"model": args.model, "basis": str(args.basis), "tensors": per,
              "relative_error": (num / den) ** 0.5 if den else num ** 0.5,
              "mean_only_relative_error": (num0 / den) ** 0.5 if den else num0 ** 0.5,
              "coefficients": sum(int(c.numel()) for c in coeffs.values()),
              "not_in_basis": sorted(k for k in sd if k not in basis.shapes)}
    if args.coefficients:
        atomic_save_safetensors({n: c.to(torch.float32).contiguous() for n, c in coeffs.items()}, args.coefficients)
        result["coefficients_file"] = str(args.coefficients)
    if args.output:
        full = {**sd, **recon}
        module = _module_for(model, args.arch, basis)
        if module is not None:
            module.load_state_dict(full)
            save_module(module, args.output)
        else:
            save_state_dict(full, args.output)
        result["output"] = str(args.output)
    if args.json:
        print_json(result)
        return 0
    print(f"projected {args.model} onto {args.basis}: {result['coefficients']} coefficients")
    for n, e in per.items():
        print(f"  {n:<32} rank {e['rank']:<5} relative error {e['relative_error']:.4g}  "
              f"(mean only {e['mean_only_relative_error']:.4g})")
    print(f"overall relative error {result['relative_error']:.4g} (mean only {result['mean_only_relative_error']:.4g})")
    for key in ("coefficients_file", "output"):
        if key in result:
            print(f"wrote {result[key]}")
    return 0

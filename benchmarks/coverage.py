"""Coverage of issue 21: which model families ``wsl`` traces, and whether their symmetries are exact.

Every family is built from a tiny configuration (torch.nn, timm, transformers, PEFT) and run through
``WeightSpace.from_module``. For each one the table reports: traced, or refused with the error's first
line; the number of unit groups (permutable / all) and of permutable units; the trace time; whether the
function is preserved under two random permutations with every float tensor randomised (weights, biases,
norm parameters and statistics, float64, max relative output error); and whether the parameter graph
decodes back bit-exactly. Families whose package is missing are listed as skipped.

The torch.nn re-creations are the test suite's own (``tests/test_space_*.py``); timm is imported with
placeholder torchvision modules when torchvision cannot be imported (as ``tests/test_space_timm.py`` does).

Usage: ``OMP_NUM_THREADS=1 python benchmarks/coverage.py [--only NAME ...]``; writes
``benchmarks/results/coverage.md``.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from coverage_families import FAMILIES, Family  # noqa: E402 (this directory)

from wsl.graph import build_one, decode  # noqa: E402
from wsl.space import WeightSpace, random_permutation  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "coverage.md"


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    for item in out:
        if isinstance(item, torch.Tensor):
            return item
    raise TypeError(f"no tensor in the output ({type(out).__name__})")


def _randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * 0.5)
    return module.eval()


def _double(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, tuple):
        return tuple(_double(v) for v in x)
    return x


def _call(module: nn.Module, x: Any) -> torch.Tensor:
    with torch.no_grad():
        return _first_tensor(module(*x) if isinstance(x, tuple) else module(x))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()).split(". Data-dependent Python control flow")[0]  # the tracer's advice
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= 150 else text[:147] + "..."


def run(f: Family) -> dict[str, str]:
    row = {"family": f.name, "source": f.source}
    missing = [p for p in f.needs if importlib.util.find_spec(p) is None]
    if missing:
        return {**row, "status": f"skipped: {missing[0]} not installed"}
    try:
        module, x, space_of = f.make()
        module = _randomize(module.double())
        x = _double(x)
    except Exception as e:  # noqa: BLE001 - a family that cannot even be built is reported, not fatal
        return {**row, "status": f"build failed: {_one_line(e)}"}
    trace = space_of or WeightSpace.from_module
    t0 = time.perf_counter()
    try:
        space = trace(module, x)
    except Exception as e:  # noqa: BLE001
        return {**row, "status": f"refused: {_one_line(e)}", "trace_s": f"{time.perf_counter() - t0:.2f}"}
    row["trace_s"] = f"{time.perf_counter() - t0:.2f}"
    perm = space.permutable_groups()
    row.update(status="traced", groups=f"{len(perm)} / {len(space.groups)}", units=f"{sum(g.size for g in perm):,}")
    sd = module.state_dict()
    ref = _call(module, x)
    errs = []
    for seed in (1, 2):
        perms = random_permutation(space, torch.Generator().manual_seed(seed))
        if not perms:
            break
        other = copy.deepcopy(module)
        other.load_state_dict(space.permute(sd, perms))
        out = _call(other, x)
        errs.append(float((out - ref).abs().max()) / max(float(ref.abs().max()), 1e-30))
    if not errs:
        row["preserved"] = "n/a (nothing permutable)"
    else:
        worst = max(errs)
        row["preserved"] = f"{'yes' if worst < 1e-9 else 'NO'} ({worst:.0e})"
    try:
        back = decode(build_one(space, sd), space)
        row["graph"] = "exact" if all(torch.equal(back[k], sd[k]) for k in sd) else "NOT exact"
    except Exception as e:  # noqa: BLE001
        row["graph"] = f"failed: {_one_line(e)}"
    return row


COLUMNS = [("family", "family"), ("source", "source"), ("status", "traced / refused (why)"),
           ("groups", "groups (permutable / all)"), ("units", "permutable units"), ("trace_s", "trace s"),
           ("preserved", "function preserved (2 perms, max rel. err)"), ("graph", "graph round trip")]


def table(rows: list[dict[str, str]]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(r.get(k, "").replace("|", "\\|") for k, _ in COLUMNS) + " |")
    traced = sum(r["status"] == "traced" for r in rows)
    exact = sum(r.get("preserved", "").startswith("yes") and r.get("graph") == "exact" for r in rows)
    skipped = sum(r["status"].startswith("skipped") for r in rows)
    wrong = [r["family"] for r in rows if r.get("preserved", "").startswith("NO")]
    lines.append("")
    lines.append(f"{traced} of {len(rows)} families traced ({exact} function-preserving with an exact graph round "
                 f"trip), {skipped} skipped; permutations that silently changed the function: "
                 f"{', '.join(wrong) if wrong else 'none'}.")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description="issue 21 coverage table")
    p.add_argument("--only", nargs="*", help="run only these families")
    p.add_argument("--no-write", action="store_true", help="print the table without writing results/coverage.md")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = []
    t0 = time.perf_counter()
    for f in FAMILIES:
        if args.only and f.name not in args.only:
            continue
        rows.append(run(f))
        print(f"  {f.name:<28} {rows[-1]['status'][:90]}", file=sys.stderr, flush=True)
    text = table(rows)
    print(text)
    cmd = "OMP_NUM_THREADS=1 python benchmarks/coverage.py"
    if not args.no_write and not args.only:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        versions = ", ".join(f"{m} {_version(m)}" for m in ("torch", "timm", "transformers", "peft"))
        RESULTS.write_text(f"<!-- generated by `{cmd}` ({versions}; {time.perf_counter() - t0:.0f} s) -->\n\n"
                           f"{text}\n")
        print(f"wrote {RESULTS}", file=sys.stderr)


def _version(name: str) -> str:
    if importlib.util.find_spec(name) is None:
        return "not installed"
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    main()

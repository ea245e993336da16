"""Issue 21's anchor: ``wsl`` and Torch-Pruning's DepGraph on the same coverage families, side by side.

For every family of ``coverage_families.py`` the ``wsl`` columns come from ``coverage.run`` called in this
process (traced or refused; function preserved under two random permutations, float64, max relative
error). The Torch-Pruning columns come from ``coverage_anchor_tp.py`` run in a child process per family,
with a timeout, on the same network (same seeds, same randomised float64 weights, same example input):
TP groups built, 25% of channels pruned by magnitude and the pruned network run, and TP's own groups
*permuted* instead of pruned to check whether its couplings are complete (what a weight-space library
needs). ``wsl`` never imports ``torch_pruning``: only the child does, found on ``PYTHONPATH`` or
``--tp-path``; Torch-Pruning is never a dependency.

Install Torch-Pruning into its own directory (it needs only torch and numpy)::

    pip install -c constraints.txt --no-deps --target /work/tp-env torch-pruning

Usage: ``OMP_NUM_THREADS=1 python benchmarks/coverage_anchor.py --tp-path /work/tp-env [--only NAME ...]``;
writes ``benchmarks/results/coverage_anchor.md`` (not with ``--only``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import coverage_anchor_common as common  # noqa: E402 (this directory; sets sys.path)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "coverage_anchor.md"
INSTALL = ("Torch-Pruning is not importable. Install it into its own directory (never into the project's "
           "environment) and point this script at it:\n"
           "  echo torch==$(python -c 'import torch; print(torch.__version__.split(\"+\")[0])') > /tmp/c.txt\n"
           "  python -m pip install -c /tmp/c.txt --no-deps --target /work/tp-env torch-pruning\n"
           "  OMP_NUM_THREADS=1 python benchmarks/coverage_anchor.py --tp-path /work/tp-env")


def child_env(tp_path: str | None) -> dict[str, str]:
    env = dict(os.environ)
    parts = [p for p in (tp_path, str(HERE), str(common.ROOT), env.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def tp_version(env: dict[str, str]) -> str | None:
    probe = "import importlib.metadata as m, torch_pruning; print(m.version('torch-pruning'))"
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    return r.stdout.strip() if r.returncode == 0 else None


def run_tp(name: str, env: dict[str, str], timeout: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, str(HERE / "coverage_anchor_tp.py"), name], env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"tp": f"timed out ({timeout:.0f} s)", "tp_s": time.perf_counter() - t0}
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        err = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        return {"tp": "child crashed", "why": (err[-1] if err else f"exit {r.returncode}")[:150]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------------------------- cells
def wsl_ok(w: dict[str, str]) -> bool:
    return w.get("status") == "traced" and w.get("preserved", "").startswith("yes")


def tp_runs(t: dict[str, Any]) -> bool:
    return t.get("tp") == "pruned, runs"


def perm_hidden(t: dict[str, Any]) -> int:
    skipped = len(t.get("perm_skipped", []))
    return t.get("perm_groups", 0) - t.get("perm_output", 0) - skipped


def tp_complete(t: dict[str, Any]) -> bool:
    """TP's groups, permuted, keep the function: every group permutable and the joint error tiny."""
    err = t.get("perm_err")
    return (isinstance(err, float) and not math.isnan(err) and err < 1e-9 and not t.get("perm_skipped")
            and perm_hidden(t) > 0)


def perm_cell(t: dict[str, Any]) -> str:
    if "perm_error" in t:
        return f"check failed: {t['perm_error']}"
    if "perm_groups" not in t:
        return ""
    hidden, err = perm_hidden(t), t.get("perm_err")
    head = "n/a (no hidden group)" if hidden == 0 or err is None or math.isnan(err) else \
        f"{'yes' if err < 1e-9 else 'NO'} ({err:.0e})"
    parts = [f"{hidden} hidden"]
    if t.get("perm_broken"):
        parts.append(f"{t['perm_broken']} break it alone")
    if t.get("perm_output"):
        parts.append(f"{t['perm_output']} output")
    if t.get("perm_skipped"):
        parts.append(f"{len(t['perm_skipped'])} not permutable here: {t['perm_skipped'][0]}")
    return f"{head}; {', '.join(parts)}"


def row_cells(w: dict[str, str], t: dict[str, Any]) -> list[str]:
    status = w.get("status", "")
    wsl = "traced" if status == "traced" else status
    tp = t.get("tp", "")
    if t.get("why"):
        tp += f": {t['why']}"
    groups = str(t["groups"]) if "groups" in t else ""
    if t.get("heads_knob"):
        groups += f" ({t['heads_knob']} attn. with num_heads)"
    kept = f"{t['params_kept']:.0%}" if "params_kept" in t else ""
    secs = f"{t['tp_s']:.2f}" if isinstance(t.get("tp_s"), float) else ""
    return [w["family"], wsl, w.get("preserved", ""), groups, tp, kept, secs, perm_cell(t)]


HEADER = ["family", "wsl: traced / refused (why)", "wsl: function preserved (2 perms)", "TP groups",
          "TP: prune 25% by magnitude, run", "TP params kept", "TP build+prune s",
          "TP groups permuted instead: function preserved (2 perms)"]


def table(rows: list[tuple[dict[str, str], dict[str, Any]]]) -> str:
    esc = [[c.replace("|", "\\|") for c in row_cells(w, t)] for w, t in rows]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines) + "\n\n" + summary(rows)


def summary(rows: list[tuple[dict[str, str], dict[str, Any]]]) -> str:
    n = len(rows)
    ws = {w["family"] for w, _ in rows if wsl_ok(w)}
    runs = {w["family"] for w, t in rows if tp_runs(t)}
    comp = {w["family"] for w, t in rows if tp_complete(t)}

    def names(s: set[str]) -> str:
        return ", ".join(sorted(s)) if s else "none"

    return "\n".join([
        f"- **wsl** traced with the function preserved: **{len(ws)} of {n}**.",
        f"- **Torch-Pruning** pruned 25% into a network that runs: **{len(runs)} of {n}**; its groups, permuted "
        f"instead of pruned, preserve the function: **{len(comp)} of {n}**.",
        f"- Pruning coverage: both {len(ws & runs)}; only wsl {len(ws - runs)}; only TP {len(runs - ws)} "
        f"({names(runs - ws)}); neither {n - len(ws | runs)} ({names({w['family'] for w, _ in rows} - ws - runs)}).",
        f"- Weight-space coverage (function-preserving permutations): both {len(ws & comp)}; only wsl "
        f"{len(ws - comp)}; only TP {len(comp - ws)} ({names(comp - ws)}).",
    ])


def main() -> int:
    p = argparse.ArgumentParser(description="issue 21 anchor: wsl vs Torch-Pruning coverage")
    p.add_argument("--only", nargs="*", help="run only these families")
    p.add_argument("--tp-path", help="directory holding torch_pruning (pip install --target DIR torch-pruning)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per family for the Torch-Pruning child")
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    env = child_env(args.tp_path)
    version = tp_version(env)
    if version is None:
        print(INSTALL, file=sys.stderr)
        return 2
    import coverage  # noqa: PLC0415 - after sys.path is set by coverage_anchor_common
    from tqdm.auto import tqdm

    fams = [f for f in common.families() if not args.only or f.name in args.only]
    rows = []
    t0 = time.perf_counter()
    for f in (bar := tqdm(fams, desc="families", unit="family")):
        bar.set_postfix_str(f.name[:30])
        common.seed_for(f)
        w = coverage.run(f)
        missing = [m for m in f.needs if importlib.util.find_spec(m) is None]
        t = {"tp": f"skipped: {missing[0]} not installed"} if missing else run_tp(f.name, env, args.timeout)
        rows.append((w, t))
    text = table(rows)
    print(text)
    if not args.no_write and not args.only:
        versions = ", ".join(f"{m} {coverage._version(m)}" for m in ("torch", "timm", "transformers", "peft"))
        cmd = "OMP_NUM_THREADS=1 python benchmarks/coverage_anchor.py --tp-path DIR"
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS.with_suffix(".md.tmp")
        tmp.write_text(f"<!-- generated by `{cmd}` (torch-pruning {version}; {versions}; timeout "
                       f"{args.timeout:.0f} s per family; {time.perf_counter() - t0:.0f} s) -->\n\n{text}\n")
        tmp.replace(RESULTS)
        print(f"wrote {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""One finished-or-new ``wsl train`` run of the INR benchmark tables (``inr_classification.py``, ``inr_editing.py``).

A run directory with ``metrics.json`` is reused (so an interrupted table resumes); otherwise ``wsl train ARGV``
runs in this process (imports paid once) with its log in ``OUT/train.log``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def cached_run(argv: list[str], out: Path, label: str, collect: bool) -> dict | None:
    """``metrics.json`` of ``out``: read if present, ``None`` when only collecting, else trained now (``None`` on failure)."""
    metrics = out / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text())
    if collect:
        return None
    t0 = time.perf_counter()
    rc, line = train_in_process(argv, out)
    if rc != 0:
        print(f"FAILED {' '.join(argv)}: {line} (log: {out / 'train.log'})", file=sys.stderr)
        return None
    print(f"  {label}: {line} [{time.perf_counter() - t0:.0f}s]", flush=True)
    return json.loads(metrics.read_text())


def train_in_process(argv: list[str], out: Path) -> tuple[int, str]:
    """``wsl train ARGV`` in this process; its log goes to ``out/train.log``; returns (exit code, summary line)."""
    import contextlib
    import io

    import torch

    from wsl.cli import main as wsl_main

    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    with open(out / "train.log", "w") as log, contextlib.redirect_stdout(buf), contextlib.redirect_stderr(log):
        rc = wsl_main(argv)
    torch.set_num_threads(1)
    return rc, buf.getvalue().strip()

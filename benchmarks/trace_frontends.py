"""Which tracing front end do real transformer models survive? (issue 21, step 1)

For every tiny ``transformers`` config of :mod:`wsl.archs.hf_tiny` and for
``torch.nn.TransformerEncoder``, this tries:

* ``fx leaves``: ``torch.fx`` symbolic tracing with every ``torch.nn`` layer a
  leaf (graph capture only, no symmetry rules);
* ``export cpu`` / ``export meta``: ``torch.export.export(..., strict=False)``
  of the model built on the CPU / on the meta device (capture only, seconds);
* ``wsl fx``: ``WeightSpace`` through the torch.fx front end alone (the only
  front end before issue 21), the tensor inputs passed positionally;
* ``wsl``: ``WeightSpace.from_module`` as it is now (export first, see
  :mod:`wsl.space.trace`) on the meta device: traced (groups / permutable
  units / seconds) or the one-line refusal.

Prints a Markdown table (``--out`` also writes it). One CPU thread.
Usage: ``python benchmarks/trace_frontends.py [--out benchmarks/results/trace_frontends.md] [NAME ...]``
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from typing import Any, Callable

import torch
import torch.fx
from torch import nn

from wsl.archs.hf_inputs import hf_example_inputs
from wsl.archs.hf_tiny import TINY_CONFIGS, build_tiny


def _encoder(device: str) -> nn.Module:
    with torch.device(device):
        layer = nn.TransformerEncoderLayer(32, 4, 48, batch_first=True)
        return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


def _cases() -> dict[str, tuple[Callable[[str], nn.Module], Callable[[nn.Module], dict[str, Any]]]]:
    out: dict[str, tuple[Callable[[str], nn.Module], Callable[[nn.Module], dict[str, Any]]]] = {}
    for name in TINY_CONFIGS:
        out[name] = ((lambda dev, n=name: build_tiny(n, dev)), lambda m: hf_example_inputs(m) or {})
    out["nn.TransformerEncoder"] = (_encoder, lambda m: {"src": torch.randn(2, 8, 32, device=_dev(m))})
    return out


def _dev(m: nn.Module) -> torch.device:
    return next(m.parameters()).device


class _LeafTracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return type(m).__module__.startswith("torch.nn.")


def _short(e: BaseException, limit: int = 90) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, BaseException | None]:
    t = time.perf_counter()
    try:
        return fn(), time.perf_counter() - t, None
    except Exception as e:  # noqa: BLE001 -- every failure is a row of the table
        return None, time.perf_counter() - t, e


def measure(name: str, build: Callable[[str], nn.Module], inputs: Callable[[nn.Module], dict[str, Any]]
            ) -> dict[str, str]:
    from wsl.space import WeightSpace
    from wsl.space.trace import trace_spec

    row: dict[str, str] = {"model": name}
    cpu = build("cpu")
    kw = inputs(cpu)
    row["params"] = f"{sum(p.numel() for p in cpu.parameters()):,}"
    _, _, e = _timed(lambda: _LeafTracer().trace(cpu))
    row["fx leaves"] = "ok" if e is None else _short(e)
    for dev, model in (("cpu", cpu), ("meta", build("meta"))):
        kwd = inputs(model)
        _, dt, e = _timed(lambda: torch.export.export(model, (), kwd, strict=False))
        row[f"export {dev}"] = f"ok {dt:.2f}s" if e is None else _short(e)
    positional = tuple(v for v in kw.values() if isinstance(v, torch.Tensor))
    _, _, e = _timed(lambda: trace_spec(cpu, positional, frontend="fx"))
    row["wsl fx"] = "traced" if e is None else _short(e)
    meta = build("meta")
    space, dt, e = _timed(lambda: WeightSpace.from_module(meta, inputs(meta)))
    if e is None:
        perm = space.permutable_groups()
        row["wsl"] = f"traced: {len(perm)} groups, {sum(g.size for g in perm)} units, {dt:.2f}s"
    else:
        row["wsl"] = "refused: " + _short(e, 160)
    return row


COLUMNS = ("model", "params", "fx leaves", "export cpu", "export meta", "wsl fx", "wsl")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="subset of models (default: all)")
    ap.add_argument("--out", help="also write the Markdown table here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    cases = _cases()
    rows = []
    for name, (build, inputs) in cases.items():
        if args.names and name not in args.names:
            continue
        rows.append(measure(name, build, inputs))
        print(" | ".join(rows[-1][c] for c in COLUMNS), flush=True)
    table = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    table += ["| " + " | ".join(r[c].replace("|", "/") for c in COLUMNS) + " |" for r in rows]
    text = "\n".join(table) + "\n"
    print(text)
    if args.out:
        from wsl.io import atomic_write

        with atomic_write(args.out) as tmp:
            tmp.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()

"""Functional check of a subspace: the test accuracy a zoo's models keep when replaced by their projections.

For a zoo source (:class:`wsl.subspace.sources.Source` with ``zoo`` and a
dataset) the basis of every tensor ``t`` (mean ``mu_t``, top-k directions
``V_t``) is fitted on all the source's rows, and every row is replaced by its
round trip::

    theta_t' = mu_t + V_t V_t^T (theta_t - mu_t)        (k = 0: the mean network)

Each reconstruction is evaluated on the dataset's test split with the
vectorized functional forward (:func:`wsl.zoo.vectorized.evaluate`, the code
that measured the zoo's ``test_accuracy``), every row with its *own*
architecture (a source may pool architectures sharing one tensor layout,
e.g. differing in activation: the basis is fitted on the pool, the rows are
evaluated per architecture). Against the original accuracy ``a_i`` measured
the same way, per k: mean and median change ``a_i' - a_i``, the fraction of
models within 1 point, the same among models with ``a_i >= 50%`` (near-chance
models stay near chance whatever is done to them), and the compression ratio
``original bytes / (basis + coefficients)`` in float32
(:func:`wsl.subspace.compress.stored_bytes`). The float16 and int8
(per model and tensor, ``s = max|w| / 127``) baselines are given beside.

**Leave-one-out** (exact): for ``loo_models`` held-out rows (seeded sample)
the basis is refitted on the other N-1 rows at the largest k, the held-out
row projected at each k and evaluated. Rows with non-finite weights are left
out (counted). ``benchmarks/subspace_compress.py`` uses the helpers here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from wsl.subspace.basis import fit
from wsl.subspace.compress import stored_bytes
from wsl.subspace.stacks import TensorStack

__all__ = ["GOOD", "KS", "accuracy_report", "evaluator", "fp16", "int8", "subspace_sweep", "summarise"]

KS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)
GOOD = 0.5
"""Models with an original test accuracy of at least this are also reported on their own."""
Stacked = dict[str, torch.Tensor]


def evaluator(desc: dict[str, Any], data: Any) -> Callable[[Stacked], torch.Tensor]:
    """Test accuracy ``(N,)`` of stacked state_dicts of one architecture (``"wsl.arch/1"`` description)."""
    from wsl.zoo.vectorized import VecNet, evaluate

    net = VecNet(desc)

    def accuracy(stacked: Stacked) -> torch.Tensor:
        params = net.flatten({k: v.float() for k, v in stacked.items()})
        bufs = {k: stacked[k] for k, e in net.entries.items() if e.role == "buffer"}
        _, ok = evaluate(net, params, bufs, None, data.x_test, data.y_test)
        return ok.float().mean(1)
    return accuracy


def fp16(stacked: Stacked) -> tuple[Stacked, int]:
    """Every floating tensor rounded to half precision; bytes stored."""
    out = {k: v.half().float() if v.is_floating_point() else v for k, v in stacked.items()}
    return out, sum(v.numel() * (2 if v.is_floating_point() else v.element_size()) for v in stacked.values())


def int8(stacked: Stacked) -> tuple[Stacked, int]:
    """Symmetric int8 per (model, tensor): ``round(w / s) * s``, ``s = max|w| / 127``; bytes incl. the scales."""
    out, nbytes = {}, 0
    for k, v in stacked.items():
        if not v.is_floating_point():
            out[k], nbytes = v, nbytes + v.numel() * v.element_size()
            continue
        flat = v.reshape(v.shape[0], -1)
        scale = (flat.abs().amax(dim=1, keepdim=True) / 127).clamp_min(1e-30)
        out[k] = ((flat / scale).round().clamp(-127, 127) * scale).reshape(v.shape)
        nbytes += flat.numel() + 4 * v.shape[0]
    return out, nbytes


def subspace_sweep(stacked: Stacked, ks: Sequence[int]) -> list[tuple[int, Stacked, int]]:
    """``(k, reconstruction, bytes)`` per k, from one fit at the largest k (directions are nested).

    The round trip of :meth:`Basis.roundtrip`, batched over the rows and in float64.
    """
    floats = {k: v for k, v in stacked.items() if v.is_floating_point()}
    n = next(iter(floats.values())).shape[0]
    basis = fit(TensorStack(floats), rank=max(ks))
    out = []
    for k in ks:
        b = basis.truncate(k)
        rec = dict(stacked)
        for name in b.names:
            mu, v = b.means[name].double(), b.dirs[name].double()
            x = floats[name].reshape(n, -1).double()
            rec[name] = (mu + ((x - mu) @ v) @ v.T).reshape(floats[name].shape).float()
        basis_b, coef_b = stored_bytes(b.shapes, {nm: b.rank(nm) for nm in b.names}, n)
        other = sum(v.numel() * v.element_size() for kk, v in stacked.items() if kk not in floats)
        out.append((k, rec, basis_b + coef_b + other))
    return out


def _within(diff: np.ndarray) -> float:
    return float((np.abs(diff) <= 0.01 + 1e-9).mean()) if len(diff) else float("nan")


def summarise(method: str, param: Any, nbytes: int, orig_bytes: int, acc: torch.Tensor, orig: torch.Tensor
              ) -> dict[str, Any]:
    """One method's row: bytes, ratio, mean accuracy, mean/median change, fraction within 1 point."""
    diff = (acc - orig).numpy()
    return {"method": method, "param": param, "bytes": int(nbytes), "ratio": orig_bytes / max(nbytes, 1),
            "accuracy": float(acc.mean()), "mean_diff": float(diff.mean()), "median_diff": float(np.median(diff)),
            "within_1pt": _within(diff), "good_models": int((orig >= GOOD).sum()),
            "within_1pt_good": _within(diff[(orig >= GOOD).numpy()])}


class _RowEvaluator:
    """Accuracy of rows of a source, each row evaluated with its own architecture."""

    def __init__(self, zoo: Any, arch_ids: Sequence[str], data: Any) -> None:
        self.arch_ids = np.asarray(list(arch_ids), dtype=object)
        self.fns = {aid: evaluator(zoo.card["architectures"][aid]["arch"], data) for aid in dict.fromkeys(arch_ids)}

    def __call__(self, stacked: Stacked, rows: np.ndarray) -> torch.Tensor:
        """``stacked``: the tensors of the source rows ``rows`` (in that order)."""
        out = torch.empty(len(rows))
        archs = self.arch_ids[rows]
        for aid, fn in self.fns.items():
            sel = np.flatnonzero(archs == aid)
            if len(sel):
                idx = torch.from_numpy(sel)
                out[idx] = fn({k: v[idx] for k, v in stacked.items()})
        return out


def _loo(stacked: Stacked, acc: _RowEvaluator, orig: torch.Tensor, sample: list[int], ks: Sequence[int],
         in_sample: dict[int, torch.Tensor], progress: bool) -> dict[str, Any]:
    """Exact leave-one-out: refit on the other N-1 rows, project the held-out row at each k, evaluate."""
    from tqdm.auto import tqdm

    floats = {k: v for k, v in stacked.items() if v.is_floating_point()}
    n = len(orig)
    recs: dict[int, list[Stacked]] = {k: [] for k in ks}
    for i in tqdm(sample, desc="leave-one-out fits", unit="model", disable=not progress):
        basis = fit(TensorStack(floats).subset([j for j in range(n) if j != i]), rank=max(ks))
        for k in ks:
            b = basis.truncate(k)
            rec = {name: t[i:i + 1] for name, t in stacked.items()}
            rec.update({name: t.unsqueeze(0) for name, t in b.roundtrip({nm: floats[nm][i] for nm in b.names}).items()})
            recs[k].append(rec)
    rows = np.asarray(sample, dtype=np.int64)
    o = orig[torch.from_numpy(rows)].numpy()
    good = o >= GOOD
    res: dict[str, Any] = {"method": "exact: a basis refitted on the other N-1 rows for every held-out row",
                           "models": len(sample), "rows": sample, "original_accuracy": float(o.mean()),
                           "originals": o.tolist(), "good_models": int(good.sum()), "per_k": {}}
    for k in ks:
        batch = {name: torch.cat([r[name] for r in recs[k]]) for name in stacked}
        d = (acc(batch, rows) - torch.from_numpy(o)).numpy()
        ins = (in_sample[k][torch.from_numpy(rows)] - torch.from_numpy(o)).numpy()
        res["per_k"][str(k)] = {"accuracy": float(o.mean() + d.mean()), "mean_diff": float(d.mean()),
                                "median_diff": float(np.median(d)), "within_1pt": _within(d),
                                "mean_diff_good": float(d[good].mean()) if good.any() else float("nan"),
                                "within_1pt_good": _within(d[good]), "diffs": d.tolist(),
                                "in_sample_mean_diff": float(ins.mean())}
    return res


def accuracy_report(source: Any, *, ks: Sequence[int] = KS, loo_models: int = 50, seed: int = 0,
                    progress: bool = True) -> dict[str, Any]:
    """Accuracy kept vs compression ratio, and leave-one-out, for a zoo source (see the module docstring).

    Returns ``{"skipped": reason}`` for sources that are not zoos with a
    dataset. ``ks`` are clipped to the stack's rank ``N - 1`` (duplicates
    dropped); ``loo_models = 0`` skips the leave-one-out.
    """
    from wsl.errors import ConfigError

    if getattr(source, "zoo", None) is None or getattr(source, "rows", None) is None:
        return {"skipped": "accuracy needs a zoo (its dataset and architectures); this source is "
                f"{source.info.get('kind', 'not a zoo')}"}
    if not source.dataset:
        return {"skipped": "the zoo's card names no dataset"}
    if any(int(k) < 0 for k in ks) or not len(ks):
        raise ConfigError(f"accuracy ks must be integers >= 0, got {list(ks)}")
    if loo_models < 0:
        raise ConfigError(f"loo_models must be >= 0, got {loo_models}")
    from wsl.zoo.data import load_dataset

    t0 = time.perf_counter()
    data = load_dataset(source.dataset)
    stacked = source.rows.stacked()
    n_all = len(source.rows)
    finite = torch.ones(n_all, dtype=torch.bool)
    for v in stacked.values():
        if v.is_floating_point():
            finite &= torch.isfinite(v.reshape(n_all, -1)).all(1)
    stacked = {k: v[finite] for k, v in stacked.items()}
    arch_ids = [str(r["arch"]) for r, ok in zip(source.rows.iter_metadata(), finite.tolist()) if ok]
    n = len(arch_ids)
    if n < 2:
        return {"skipped": f"{n} row(s) with finite weights; the accuracy check needs at least 2"}
    acc = _RowEvaluator(source.zoo, arch_ids, data)
    everyone = np.arange(n)
    orig = acc(stacked, everyone)
    orig_bytes = sum(v.numel() * v.element_size() for v in stacked.values())
    ks = sorted({min(int(k), n - 1) for k in ks})
    methods = [summarise(name, None, nb, orig_bytes, acc(rec, everyone), orig)
               for name, (rec, nb) in (("float16", fp16(stacked)), ("int8", int8(stacked)))]
    in_sample = {}
    for k, rec, nb in subspace_sweep(stacked, ks):
        in_sample[k] = acc(rec, everyone)
        methods.append(summarise("mean only" if k == 0 else "subspace", k, nb, orig_bytes, in_sample[k], orig))
    out: dict[str, Any] = {
        "dataset": data.name, "split": "test", "n_test": int(data.x_test.shape[0]), "n_models": n,
        "nonfinite_models_left_out": int((~finite).sum()), "architectures": sorted(acc.fns),
        "fit": "one basis on all the source's rows (pooled architectures included); each row evaluated with its "
               "own architecture", "good_threshold": GOOD, "ks": ks, "original_bytes": int(orig_bytes),
        "original_accuracy": float(orig.mean()), "good_models": int((orig >= GOOD).sum()), "methods": methods}
    if loo_models:
        t1 = time.perf_counter()
        rng = np.random.default_rng(seed)
        sample = sorted(rng.choice(n, size=min(loo_models, n), replace=False).tolist())
        out["loo"] = _loo(stacked, acc, orig, sample, ks, in_sample, progress)
        out["loo"]["seed"], out["loo"]["seconds"] = seed, time.perf_counter() - t1
    out["seconds"] = time.perf_counter() - t0
    return out

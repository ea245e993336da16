"""``wsl zoo generate``: train a zoo from a recipe, vectorized, sharded and resumable.

Models ``0 .. N-1`` are cut into chunks of ``models_per_chunk`` consecutive
indices. ``--shard i/n`` generates the ``i``-th of ``n`` contiguous runs of
chunks; since everything about model ``j`` depends only on the recipe seed and
``j`` (and dropout noise on the chunk), merging the shards of a run
(``wsl zoo merge``) gives exactly the models of the unsharded run.

A chunk is trained at once (:func:`wsl.zoo.optim.train_chunk`; models of
one architecture family share a vectorized network) and written with one
:meth:`ZooWriter.append` per architecture, each tagged ``chunk="CCCCC.j"``.
On a rerun of the same command, chunks whose appends are all committed are
skipped, so a killed run resumes where it stopped and ends with the same zoo.
``--workers N`` trains chunks in N spawned processes (one torch thread each by
default) while this process appends their results in chunk order; the zoo is
the same for any N.

Rows: ``model_id`` ``m<index>``, one row per checkpoint epoch, ``seed`` = the
model's init seed, ``hparams`` = sampled hyperparameters plus ``batch_size``,
``epochs``, ``train_size``; metrics on the data set's fixed split: train
loss/accuracy over the model's *own* training subset, test over the held-out
test set; plus ``steps`` (optimizer steps so far) and ``diverged`` (the model
hit a non-finite update and was frozen at its last finite weights).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsl.errors import ConfigError, WslError, ZooFormatError
from wsl.zoo.recipes import Recipe, load_recipe, model_seeds, sample_architecture, sample_hparams

__all__ = ["generate", "register_generate", "resolve_device"]

Append = tuple[dict[str, Any], dict[str, torch.Tensor], list[dict[str, Any]]]  # (arch, stacked, rows)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available, else cpu; otherwise the named device (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return dev


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(t) for t in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: need 0 <= i < n")
    return i, n


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


@dataclass
class _Model:
    index: int
    hp: dict[str, Any]
    seeds: tuple[int, int, int]
    arch_key: str  # models with the same key share an architecture description
    train_key: str  # models with the same key are trained as one vectorized network


class _Plan:
    """Per-model choices of a classification recipe (descriptions cached per architecture key)."""

    def __init__(self, recipe: Recipe, data: Any) -> None:
        self.recipe, self.data = recipe, data
        self.descs: dict[str, dict[str, Any]] = {}

    def model(self, index: int) -> _Model:
        r = self.recipe
        hp = sample_hparams(r, index)
        if r.architecture["type"] == "wild":
            key = f"block{index // int(r.architecture.get('models_per_arch', 20))}"
            return _Model(index, hp, model_seeds(r.generation.get("seed", 0), index), key, key)
        act = hp["activation"]  # one vectorized network per activation: no per-model mixing needed
        return _Model(index, hp, model_seeds(r.generation.get("seed", 0), index), act, act)

    def desc(self, m: _Model) -> dict[str, Any]:
        if m.arch_key not in self.descs:
            try:
                self.descs[m.arch_key] = sample_architecture(self.recipe, m.index, input_shape=self.data.input_shape,
                                                             num_classes=self.data.num_classes)
            except WslError as err:
                raise ConfigError(f"{self.recipe.source}: architecture: {err}") from None
        return self.descs[m.arch_key]

    def arch_keys(self, indices: list[int]) -> list[str]:
        return list(dict.fromkeys(self.model(i).arch_key for i in indices))


def _classification_chunk(plan: _Plan, indices: list[int], chunk: int, device: torch.device,
                          progress: Any) -> list[Append]:
    from wsl.zoo.recipes import init_rows
    from wsl.zoo.optim import ModelRun, train_chunk
    from wsl.zoo.vectorized import VecNet, evaluate

    recipe, data = plan.recipe, plan.data
    tr, seed = recipe.training, int(recipe.generation.get("seed", 0))
    models = [plan.model(i) for i in indices]
    groups: dict[str, list[_Model]] = {}
    for m in models:
        groups.setdefault(m.train_key, []).append(m)
    per_arch: dict[str, list[tuple[_Model, int, dict[str, Any], dict[str, torch.Tensor]]]] = {}
    n_train = data.x_train.shape[0]
    for gj, members in enumerate(groups.values()):
        net = VecNet(plan.desc(members[0]))
        subsets = []
        for m in members:
            size = max(1, round(m.hp["train_fraction"] * n_train))
            perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(m.seeds[1]))
            subsets.append(perm[:size].sort().values)
        inits = init_rows(net, [(m.hp["w_init"], m.hp["init_std"]) for m in members], [m.seeds[0] for m in members])
        runs = [ModelRun(m.hp["optimizer"], m.hp["lr"], m.hp["weight_decay"], m.hp["dropout"], m.hp.get("activation"),
                         s, inits[j], m.seeds[2]) for j, (m, s) in enumerate(zip(members, subsets))]
        noise_seed = int(np.random.SeedSequence([seed, chunk, 3, gj]).generate_state(1, np.uint32)[0])
        res = train_chunk(net, runs, data.x_train, data.y_train, batch_size=tr["batch_size"], epochs=tr["epochs"],
                          checkpoints=tr.get("checkpoints", [tr["epochs"]]), seed=noise_seed, device=device,
                          progress=lambda f, n=len(members): progress(f * n))
        n, e = len(members), len(res.epochs)
        flat = res.params.reshape(n * e, -1)
        bufs = {k: v.reshape(n * e, *v.shape[2:]) for k, v in res.buffers.items()}
        acts = [m.hp["activation"] for m in members for _ in range(e)] if members[0].hp.get("activation") else None
        tr_loss, tr_ok = evaluate(net, flat, bufs, acts, data.x_train, data.y_train, device=device)
        te_loss, te_ok = evaluate(net, flat, bufs, acts, data.x_test, data.y_test, device=device)
        member = torch.zeros(n, n_train, dtype=torch.bool)
        for j, s in enumerate(subsets):
            member[j, s] = True
        member = member.repeat_interleave(e, 0)
        metrics = {"train_loss": torch.where(member, tr_loss, 0.0).sum(1) / member.sum(1),
                   "train_accuracy": (tr_ok & member).sum(1) / member.sum(1),
                   "test_loss": te_loss.mean(1), "test_accuracy": te_ok.float().mean(1)}
        stacked = net.unflatten(flat, bufs)
        for j, m in enumerate(members):
            for ci, epoch in enumerate(res.epochs):
                v = j * e + ci
                div = res.diverged_epoch[j]
                row = {"model_id": f"m{m.index:06d}", "epoch": epoch, "seed": m.seeds[0],
                       "hparams": {**m.hp, "batch_size": tr["batch_size"], "epochs": tr["epochs"],
                                   "train_size": len(subsets[j])},
                       **{k: _num(float(t[v])) for k, t in metrics.items()},
                       "steps": epoch * res.steps_per_epoch[j], "diverged": div is not None and div <= epoch}
                per_arch.setdefault(m.arch_key, []).append((m, v, row, stacked))
    out: list[Append] = []
    for key in plan.arch_keys(indices):
        items = sorted(per_arch[key], key=lambda it: (it[0].index, it[2]["epoch"]))
        first = items[0][3]
        if all(it[3] is first for it in items):
            idx = torch.tensor([it[1] for it in items])
            part = {k: t.index_select(0, idx).contiguous() for k, t in first.items()}
        else:  # an architecture spread over several training groups (not produced by the built-in types)
            part = {k: torch.stack([it[3][k][it[1]] for it in items]) for k in first}
        out.append((plan.desc(items[0][0]), part, [it[2] for it in items]))
    return out


_WORKER: dict[str, Any] = {}


def _init_worker(queue: Any, threads: int) -> None:
    """Worker process setup: progress channel, torch threads, exit when the parent dies (e.g. kill -9)."""
    import threading

    torch.set_num_threads(threads)
    _WORKER["queue"] = queue
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _setup(r: Recipe) -> tuple[Any, "_Plan | None"]:
    """The data (and, for classification, the per-model plan) of a recipe."""
    if r.task == "siren":
        from wsl.zoo import siren

        return siren.ImageData.from_recipe(r), None
    from wsl.zoo.data import load_dataset

    data = load_dataset(r.dataset["name"])
    return data, _Plan(r, data)


def _train(r: Recipe, data: Any, plan: "_Plan | None", c: int, idx: list[int], device: torch.device,
           splits: dict[str, Any], progress: Any) -> list[Append]:
    if plan is None:
        from wsl.zoo import siren

        return siren.fit_chunk(r, data, idx, c, device, splits, progress)
    return _classification_chunk(plan, idx, c, device, progress)


def _worker_chunk(r: Recipe, c: int, idx: list[int], device: torch.device, splits: dict[str, Any]) -> list[Append]:
    """Train chunk ``c`` in a worker process (data and plan cached per recipe)."""
    key = json.dumps(r.raw, sort_keys=True)
    if _WORKER.get("key") != key:
        _WORKER.update(key=key, setup=_setup(r))
    data, plan = _WORKER["setup"]
    return _train(r, data, plan, c, idx, device, splits, _WORKER["queue"].put)


def _results(todo: list[tuple[int, list[int], list[str]]], r: Recipe, data: Any, plan: "_Plan | None",
             device: torch.device, splits: dict[str, Any], workers: int, bar: Any) -> Iterator[list[Append]]:
    """Trained chunks of ``todo``, in order; with ``workers > 1`` computed ahead in worker processes."""
    if workers <= 1 or len(todo) <= 1:
        for c, idx, _ in todo:
            yield _train(r, data, plan, c, idx, device, splits, bar.update)
        return
    import multiprocessing
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor, TimeoutError as FutureTimeout

    ctx = multiprocessing.get_context("spawn")
    channel = ctx.Queue()

    def drain() -> None:
        with contextlib.suppress(queue_mod.Empty):
            while True:
                bar.update(channel.get_nowait())

    workers = min(workers, len(todo))
    ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(channel, torch.get_num_threads()))
    try:
        ahead = iter(todo)
        pending = collections.deque(ex.submit(_worker_chunk, r, c, idx, device, splits)
                                    for c, idx, _ in itertools.islice(ahead, workers + 1))
        while pending:
            fut = pending.popleft()
            while True:
                try:
                    result = fut.result(timeout=0.25)
                    break
                except FutureTimeout:
                    drain()
            drain()
            nxt = next(ahead, None)
            if nxt is not None:
                pending.append(ex.submit(_worker_chunk, r, nxt[0], nxt[1], device, splits))
            yield result
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def generate(recipe: str | Path | Recipe, out: str | Path, *, num_models: int | None = None,
             epochs: int | None = None, shard: str | tuple[int, int] | None = None, seed: int | None = None,
             device: str = "auto", models_per_chunk: int | None = None, progress: bool = True,
             workers: int = 1) -> dict[str, Any]:
    """Generate (or resume) the zoo of ``recipe`` at ``out``; returns a summary dict.

    ``workers > 1`` trains chunks in that many worker processes (spawned, each
    with this process's torch thread count); the results are identical.
    """
    from tqdm.auto import tqdm

    from wsl.zoo.writer import ZooWriter

    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    r = r.with_overrides(num_models=num_models, epochs=epochs, seed=seed, models_per_chunk=models_per_chunk)
    shard_i, shard_n = shard if isinstance(shard, tuple) else parse_shard(shard)
    dev = resolve_device(device)
    data, plan = _setup(r)
    if plan is None:
        total = data.num_images if r.generation.get("num_models") is None else min(
            int(r.generation["num_models"]), data.num_images)
    else:
        total = int(r.generation["num_models"])
    per_chunk = int(r.generation.get("models_per_chunk", 128))
    n_chunks = math.ceil(total / per_chunk)
    mine = list(range(n_chunks * shard_i // shard_n, n_chunks * (shard_i + 1) // shard_n))
    gen_info = {"shard": [shard_i, shard_n], "chunks": [mine[0], mine[-1] + 1] if mine else [0, 0]}
    writer = ZooWriter(out, name=r.name, dataset=data.card(), recipe=r.raw, splits=r.splits,
                       version=str(r.raw.get("version", "1.0")), description=str(r.raw.get("description", "")),
                       extra={"generator": gen_info})
    t0 = time.perf_counter()
    done_models = 0
    finals: list[float] = []
    metric = "psnr" if r.task == "siren" else "test_accuracy"
    with writer:
        if writer.card["extra"].get("generator", {}).get("shard") != gen_info["shard"]:
            raise ZooFormatError(f"{out}: this zoo was generated with --shard "
                                 f"{writer.card['extra'].get('generator', {}).get('shard')}, not "
                                 f"{shard_i}/{shard_n}; use another output directory")
        completed = writer.completed_chunks()
        todo = []
        for c in mine:
            idx = list(range(c * per_chunk, min(total, (c + 1) * per_chunk)))
            tokens = [f"{c:05d}.{j}" for j in range(1 if plan is None else len(plan.arch_keys(idx)))]
            if not all(t in completed for t in tokens):
                todo.append((c, idx, tokens))
        n_mine = sum(min(total, (c + 1) * per_chunk) - c * per_chunk for c in mine)
        unit = "image" if plan is None else "model"  # SIREN chunks count images (fits_per_image fits each)
        with tqdm(total=n_mine, initial=n_mine - sum(len(t[1]) for t in todo), unit=unit, smoothing=0.2,
                  desc=f"generate {r.name}", disable=not progress,
                  bar_format="{l_bar}{bar}| {n:.0f}/{total} [{elapsed}<{remaining}, {rate_fmt}]") as bar:
            for (c, idx, tokens), appends in zip(todo, _results(todo, r, data, plan, dev, writer.card["splits"],
                                                                 workers, bar)):
                for token, (desc, stacked, rows) in zip(tokens, appends):
                    if token not in completed:
                        writer.append(writer.add_architecture(desc), stacked, rows, chunk=token)
                    last = max(row["epoch"] or 0 for row in rows)
                    finals += [row[metric] for row in rows
                               if (row["epoch"] or 0) == last and row.get(metric) is not None]
                done_models += len(idx)
            bar.n = n_mine
            bar.refresh()
        num_rows, num_models_total = writer.num_rows, writer.card["num_models"]
    elapsed = time.perf_counter() - t0
    q = np.quantile(finals, [0, 0.25, 0.5, 0.75, 1]).tolist() if finals else []
    return {"output": str(out), "rows": num_rows, "models": num_models_total, "trained_models": done_models,
            "seconds": elapsed, "models_per_second": done_models / elapsed if elapsed > 0 else None,
            "unit": "images" if plan is None else "models", "final_metric": metric, "final_quantiles": q}


def register_generate(zsub: Any) -> None:
    """Add ``wsl zoo generate`` to the ``wsl zoo`` subcommand group."""
    g = zsub.add_parser("generate", help="train a zoo from a recipe (vectorized, sharded, resumable)",
                        description="Train the models of a recipe (zoos/*.yaml) many at a time and write them as "
                        "a wsl.zoo/1 zoo. Rerun the same command to resume an interrupted run.")
    g.add_argument("recipe", help="recipe YAML file (e.g. zoos/digits-cnn-gs.yaml)")
    g.add_argument("-o", "--output", required=True, help="zoo directory to create (or resume)")
    g.add_argument("--num-models", type=int, help="number of models (default: the recipe's)")
    g.add_argument("--epochs", type=int, help="epochs (SIREN: steps); checkpoints beyond are dropped")
    g.add_argument("--shard", metavar="i/n", help="generate only the i-th of n disjoint parts (merge later)")
    g.add_argument("--seed", type=int, help="recipe seed (default: the recipe's)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--models-per-chunk", type=int, help="models trained together and committed at once")
    g.add_argument("--threads", type=int, help="CPU threads for torch (default 1: these networks are too small "
                   "for intra-op threads to pay off, and extra threads stall badly on a busy machine; to use "
                   "more cores, run --shard i/n parts in parallel and merge them)")
    g.add_argument("--workers", type=int, help="worker processes training chunks in parallel (default: one per "
                   "CPU core, at most one per pending chunk; 1 = train in this process)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--json", action="store_true", help="print the summary as JSON")
    g.set_defaults(func=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    """Handler of ``wsl zoo generate``."""
    for name in ("num_models", "epochs", "models_per_chunk", "workers"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: expected a positive int, got {v}")
    if args.seed is not None and args.seed < 0:
        raise ConfigError(f"--seed: expected an int >= 0, got {args.seed}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads: expected a positive int, got {args.threads}")
    torch.set_num_threads(args.threads or 1)
    workers = args.workers
    if workers is None:  # CPU: one process per core; GPU: the device is shared anyway
        workers = (os.cpu_count() or 1) if resolve_device(args.device).type == "cpu" else 1
    s = generate(args.recipe, args.output, num_models=args.num_models, epochs=args.epochs, shard=args.shard,
                 seed=args.seed, device=args.device, models_per_chunk=args.models_per_chunk, progress=not args.quiet,
                 workers=workers)
    if args.json:
        print(json.dumps(s))
        return 0
    rate = f", {s['models_per_second']:.1f} {s['unit']}/s" if s["trained_models"] else ""
    print(f"wrote {s['output']}: {s['rows']:,} rows, {s['models']:,} models; trained {s['trained_models']:,} "
          f"{s['unit']} in {s['seconds']:.1f}s{rate}")
    if s["final_quantiles"]:
        print(f"final {s['final_metric'].replace('_', ' ')} of the trained models (min/q25/median/q75/max): "
              + " / ".join(f"{v:.3f}" for v in s["final_quantiles"]))
    return 0

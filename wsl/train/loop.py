"""``Trainer``: fit a meta-model to predict generalization from weights.

One run = one :class:`~wsl.train.config.Config`. The run directory holds::

    checkpoints/last/   model.safetensors, state.pt, config.json   (after every epoch)
    checkpoints/best/   the same for the best validation Kendall tau
    metrics.json        val/test tau, R^2, MAE (best checkpoint), timing, #params, config, history
    test_scatter.png    predicted vs true on the test split (skipped with a warning without matplotlib)
    predictor/          a self-contained predictor (wsl.train.predictor.load_predictor)

Determinism: the training order of epoch ``e`` is ``randperm`` seeded by
``(seed, e)`` and the augmentation of step ``s`` by ``(seed, e, s, rank)``;
``state.pt`` (``torch.save`` of plain tensors and numbers, read with
``weights_only=True``) carries the optimizer, scheduler, early-stopping state
and the torch RNG states, so ``--resume`` continues the last completed epoch
and yields the same weights as an uninterrupted run.

Threads: the Trainer uses the process's torch thread setting; the entry point
chooses it (``wsl train`` applies ``train.threads``).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsl.errors import ConfigError
from wsl.tasks.metrics import to_json
from wsl.train import distributed as D
from wsl.train.checkpoints import load_checkpoint, save_checkpoint
from wsl.train.config import Config
from wsl.train.generalization_task import GeneralizationTask

__all__ = ["Trainer", "train"]


def _lr_lambda(cfg: Config, steps_per_epoch: int) -> Callable[[int], float]:
    total = max(1, cfg.train.epochs * steps_per_epoch)
    warm = int(round(cfg.schedule.warmup_epochs * steps_per_epoch))
    floor = cfg.schedule.min_lr_ratio

    def fn(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.schedule.name == "constant":
            return 1.0
        prog = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * prog))

    return fn


class Trainer(GeneralizationTask):
    """Train ``cfg.model`` on ``cfg.data`` (see module docstring); :meth:`fit` runs it.

    The task-specific parts -- data, loss, metrics, artifacts -- are hook methods; this class gets the
    generalization task's from :class:`~wsl.train.generalization_task.GeneralizationTask`, and the INR
    tasks override them (:mod:`wsl.train.inr_trainers`).
    """

    def __init__(self, cfg: Config, output: str | Path | None = None, *, resume: bool = False,
                 log: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        out = output or cfg.output
        if not out:
            raise ConfigError("no output directory: set 'output' in the config or pass --output")
        self.out = Path(out)
        self.resume = resume
        self.info = D.setup(cfg.train.device)
        self.device = self.info.device
        self._log = log or (lambda s: print(s, file=sys.stderr, flush=True))

    def log(self, msg: str) -> None:
        if self.info.is_main:
            self._log(msg)

    # ------------------------------------------------------------------ setup
    def _prepare(self) -> None:
        from wsl.io import local_path
        from wsl.train.registry import InputInfo, build_model, check_params, resolve_model
        from wsl.zoo import load_zoo

        cfg, dc = self.cfg, self.cfg.data
        if self.info.enabled and not self.info.is_main:
            D.barrier(self.info)  # rank 0 resolves (downloads) hf:// zoos first
        path = local_path(dc.zoo, repo_type="dataset")
        if self.info.enabled and self.info.is_main:
            D.barrier(self.info)
        self.zoo = load_zoo(path, verify=dc.verify)
        self.entry = resolve_model(cfg.model.name, self.model_output)
        check_params(self.entry, cfg.model.params)  # fail before the (slow) data preparation
        kind = self.entry.input_kind
        names = {"train": dc.train_split, "val": dc.val_split, "test": dc.test_split}
        layout = self.stats_layout = self._stats_layout(kind, names)
        t0 = time.perf_counter()
        ckpt = {role: (dc.train_checkpoints if role == "train" and dc.train_checkpoints != "same" else dc.checkpoints)
                for role in names}
        probe_x = self._probe_inputs() if cfg.probes.total and kind != "stats" else None
        self.data = self._make_splits(kind, names, ckpt, layout, probe_x)
        self.log(f"data: {', '.join(f'{r} {len(d)} rows' for r, d in self.data.items())} "
                 f"({kind} inputs, built in {time.perf_counter() - t0:.1f}s)")
        tr = self.data["train"]
        self._set_targets(tr)
        edge_dim, space = self._input_facts(kind, tr)
        probes = self._probe_info(tr, probe_x)
        self.input_info = self._input_info(InputInfo(kind, space, int(tr.stats.shape[1])
                                                     if getattr(tr, "stats", None) is not None else None,
                                                     layout if kind == "stats" else None, edge_dim, probes))
        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model.name, self.input_info, cfg.model.params).to(self.device)
        if probe_x is not None:
            self._attach_probes(tr, probe_x)
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        self.ddp: nn.Module = self.model
        if self.info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.model, device_ids=ids, find_unused_parameters=cfg.train.find_unused_parameters)
        oc = cfg.optim
        params = [p for p in self.model.parameters() if p.requires_grad]
        if oc.name == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(params, lr=oc.lr, momentum=oc.momentum,
                                                              weight_decay=oc.weight_decay)
        else:
            cls = torch.optim.AdamW if oc.name == "adamw" else torch.optim.Adam
            self.opt = cls(params, lr=oc.lr, betas=oc.betas, weight_decay=oc.weight_decay)
        n, b = len(tr), cfg.train.batch_size
        self.steps_per_epoch = n // b if cfg.train.drop_last and n >= b else math.ceil(n / b)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(cfg, self.steps_per_epoch))
        self.amp_ctx = self._amp()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_ctx is not None and cfg.train.amp_dtype == "fp16")

    def _amp(self) -> Any:
        if not self.cfg.train.amp:
            return None
        if self.device.type != "cuda":
            self.log("note: train.amp is a no-op on CPU (autocast is only used on CUDA)")
            return None
        return torch.bfloat16 if self.cfg.train.amp_dtype == "bf16" else torch.float16

    # ------------------------------------------------------------- checkpoints
    def _save(self, name: str, state: dict[str, Any]) -> None:
        if self.info.is_main:
            save_checkpoint(self.out / "checkpoints", name, self.model, self.opt, self.sched, self.scaler, state,
                            self.cfg.to_dict())

    def _load(self, name: str) -> dict[str, Any]:
        return load_checkpoint(self.out / "checkpoints" / name, self.model, self.opt, self.sched, self.scaler,
                               self.device, self.cfg.to_dict(), self.log)

    # ----------------------------------------------------------------- running
    def _loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fn = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.smooth_l1_loss}[self.cfg.train.loss]
        return fn(pred, y, reduction="none")

    @torch.no_grad()
    def predict(self, role: str) -> np.ndarray:
        """De-normalized predictions (:meth:`_eval_batch` outputs) for every row of split ``role``, gathered
        over ranks."""
        split = self.data[role]
        self.model.eval()
        n = len(split)
        local_pos = D.shard(torch.arange(n), self.info)
        preds, places = [], []
        for lo in range(0, len(local_pos), self.cfg.train.eval_batch_size):
            out, order = self._eval_batch(split, local_pos[lo:lo + self.cfg.train.eval_batch_size])
            preds.append(out)
            places.append(order)
        self.model.train()
        p = torch.cat(preds) if preds else torch.zeros(0, device=self.device)
        pos = torch.cat(places) if places else torch.zeros(0, dtype=torch.long)
        full = D.gather_predictions(p, pos, n, self.info).cpu().numpy()
        return self._denormalize(full)

    def _epoch(self, epoch: int) -> float:
        cfg, tr, info = self.cfg, self.data["train"], self.info
        n, b = len(tr), cfg.train.batch_size
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + epoch))
        from tqdm.auto import tqdm

        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="step",
                   disable=not (info.is_main and cfg.train.progress), leave=False, file=sys.stderr)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        seen, t0 = 0, time.perf_counter()
        self.model.train()
        for step in range(self.steps_per_epoch):
            gidx = perm[step * b:(step + 1) * b]
            lidx = D.shard(gidx, info)
            weight = info.world_size / len(gidx)
            if not len(lidx):  # a final batch smaller than the world: join the all-reduce with a zero loss
                lidx, weight = gidx[:1], 0.0
            gen = torch.Generator().manual_seed(hash((cfg.train.seed, epoch, step, info.rank)) & 0x7FFFFFFF)
            lv = self._step_loss(tr, lidx, gen) * (1.0 if weight else 0.0)
            loss = lv.sum() * weight
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.optim.grad_clip:
                self.scaler.unscale_(self.opt)
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            loss_sum += lv.detach().sum().double()
            seen += len(gidx)  # global count: the all-reduced loss sum covers the whole batch
            if bar.disable is False:
                bar.update(1)
                bar.set_postfix(loss=f"{float(lv.detach().mean()):.4f}",
                                models_s=f"{seen / max(time.perf_counter() - t0, 1e-9):.0f}")
        bar.close()
        return float(D.all_sum(loss_sum, info)) / max(seen, 1)

    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train (or resume), then write metrics, plot and predictor; returns the metrics dict.

        ``stop_after`` ends the run after that many epochs *in this call*
        without the final evaluation (to test ``--resume``).
        """
        cfg = self.cfg
        self._mark = time.perf_counter()
        self._prepare()
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        st: dict[str, Any] = {"epoch": 0, "best_tau": -math.inf, "best_epoch": -1, "bad": 0, "history": [],
                              "train_time": 0.0, "wall_time": 0.0, "models": 0}
        if self.resume:
            st = self._load("last")
            self.log(f"resumed from {self.out / 'checkpoints' / 'last'} after epoch {st['epoch']}")
        self.log(f"model {cfg.model.name}: {self.num_parameters:,} parameters, device {self.device}, "
                 f"world size {self.info.world_size}")
        done = 0
        while st["epoch"] < cfg.train.epochs and not (cfg.train.patience and st["bad"] >= cfg.train.patience):
            t0 = time.perf_counter()
            loss = self._epoch(st["epoch"])
            dt = time.perf_counter() - t0
            st["train_time"] += dt
            st["models"] += len(self.data["train"])
            val = self.evaluate("val")
            tau = val[self.score_key] if math.isfinite(val[self.score_key]) else -math.inf
            st["epoch"] += 1
            better = tau > st["best_tau"] or st["best_epoch"] < 0
            if better:
                st.update(best_tau=tau, best_epoch=st["epoch"], bad=0)
            else:
                st["bad"] += 1
            st["history"].append(to_json({"epoch": st["epoch"], "loss": loss, "val": val,
                                          "lr": self.sched.get_last_lr()[0], "seconds": dt}))
            self.log(f"epoch {st['epoch']}/{cfg.train.epochs} loss {loss:.4f} {self._epoch_summary(val)} | "
                     f"{len(self.data['train']) / dt:.0f} models/s" + (" *" if better else ""))
            if better:
                self._save("best", st)
            self._save("last", st)
            D.barrier(self.info)
            now = time.perf_counter()
            st["wall_time"] += now - self._mark
            self._mark = now
            done += 1
            if stop_after is not None and done >= stop_after:
                return {"stopped_after": done, **st}
        return self._finish(st)

    def _finish(self, st: dict[str, Any]) -> dict[str, Any]:
        from wsl.io import load_safetensors

        best = self.out / "checkpoints" / "best" / "model.safetensors"
        self.model.load_state_dict(load_safetensors(best, device=str(self.device)))
        res, extra = self._final_results()
        cfg = self.cfg
        metrics = to_json({
            "val": res["val"], "test": res["test"], "best_epoch": st["best_epoch"], "epochs_run": st["epoch"],
            "stopped_early": st["epoch"] < cfg.train.epochs,
            "wall_time_s": st["wall_time"] + time.perf_counter() - self._mark, "train_time_s": st["train_time"],
            "models_per_s": st["models"] / max(st["train_time"], 1e-9), "num_parameters": self.num_parameters,
            "model": cfg.model.name, "input_kind": self.entry.input_kind, **extra,
            "n_train": len(self.data["train"]), "world_size": self.info.world_size, "device": str(self.device),
            "config": cfg.to_dict(), "history": st["history"],
        })
        if self.info.is_main:
            from wsl.io import atomic_open

            with atomic_open(self.out / "metrics.json", "w", encoding="utf-8") as fh:
                json.dump(metrics, fh, indent=1)
            self._write_artifacts(metrics, res)
        D.barrier(self.info)
        return metrics



def train(cfg: Config, output: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Run one generalization experiment; cleans up the process group afterwards.

    Any task: :func:`wsl.train.run.train` (what ``wsl train`` and ``wsl.train.train`` call).
    """
    if cfg.task != "generalization":
        raise ConfigError(f"wsl.train.loop.train runs task generalization; task {cfg.task!r} runs with "
                          "wsl.train.run.train (or wsl.train.train)")
    try:
        return Trainer(cfg, output, resume=resume).fit()
    finally:
        D.cleanup()

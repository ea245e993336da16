"""The generalization task's hooks of the :class:`~wsl.train.loop.Trainer`: data, targets, loss, metrics, artifacts.

The Trainer runs the loop (epochs, optimizer, schedule, early stopping,
checkpoints, resume, DDP) and asks these methods for everything that depends
on the task. Here: predict a network's ``data.target`` (e.g. test accuracy)
from its weights -- regression on normalised targets, Kendall tau selects the
best checkpoint, a scatter plot and a self-contained predictor are written.
Other tasks subclass the Trainer and override them (:mod:`wsl.train.inr_trainers`).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from wsl.errors import WslError
from wsl.tasks.metrics import regression_metrics
from wsl.train import distributed as D

__all__ = ["GeneralizationTask"]


class GeneralizationTask:
    """Mixin of hook methods (see the module docstring); reads the Trainer's attributes."""

    cfg: Any
    zoo: Any
    data: dict[str, Any]
    device: torch.device
    model: Any
    ddp: Any
    amp_ctx: Any
    info: Any
    out: Any
    input_info: Any
    y_mean: float
    y_std: float

    score_key = "tau"  #: the validation metric that selects the best checkpoint (higher is better)
    model_output = "invariant"  #: what the model returns (wsl.train.registry.InputInfo.output)

    def _make_splits(self, kind: str, names: dict[str, str], ckpt: dict[str, str], layout: str,
                     probe_x: torch.Tensor | None) -> dict[str, Any]:
        """The train/val/test data (objects with ``len()``, ``.y`` and ``.inputs(idx, augment, generator)``)."""
        from wsl.tasks.generalization import prepare_split

        cfg, dc = self.cfg, self.cfg.data
        data = {role: prepare_split(self.zoo, role, s, kind, target=dc.target, checkpoints=ckpt[role],
                                    arch=dc.arch, max_rows=dc.max_train if role == "train" else None,
                                    seed=cfg.train.seed, stats_layout=layout, device=self.device,
                                    transform=dc.transform if kind != "stats" else "none",
                                    probe_inputs=probe_x, probe_learn=cfg.probes.learn)
                for role, s in names.items()}
        if kind == "features":
            sig = data["train"].groups[0].space.signature
            for role in ("val", "test"):
                other = data[role].groups[0].space.signature
                if other != sig:
                    raise WslError(f"{dc.zoo}: {role} split architecture {other} differs from train ({sig})")
        return data

    def _set_targets(self, tr: Any) -> None:
        """Target normalization from the training split: ``(y - mean) / std``."""
        y = tr.y.double()
        self.y_mean = float(y.mean())
        self.y_std = float(y.std()) if len(y) > 1 and float(y.std()) > 1e-12 else 1.0

    def _input_facts(self, kind: str, tr: Any) -> tuple[int | None, Any]:
        """``(edge_dim, space)`` of the training data for the model's InputInfo."""
        edge_dim = None
        if kind == "graph":
            edge_dim = max(int(g.cache.per_model["edge_attr"].shape[-1]) if "edge_attr" in g.cache.per_model
                           else max(int(g.cache.shared["edge_width"].max()), 1) for g in tr.groups)  # ragged
        return edge_dim, (tr.groups[0].space if len(tr.groups) == 1 else None)

    def _input_info(self, info: Any) -> Any:
        """The InputInfo the model is built from (a task may set its outputs)."""
        return info

    def _step_loss(self, tr: Any, lidx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Per-example training losses of the batch at positions ``lidx`` (augmented with ``gen``)."""
        x, order = tr.inputs(lidx, self.cfg.augment, gen)
        y = (tr.y[order.to(tr.y.device)] - self.y_mean) / self.y_std
        with torch.autocast(self.device.type, dtype=self.amp_ctx, enabled=self.amp_ctx is not None):
            pred = self.ddp(x).reshape(-1).float()
        return self._loss(pred, y)

    def _eval_batch(self, split: Any, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(outputs (b, ...), positions)`` of a batch for :meth:`predict` (no gradient)."""
        x, order = split.inputs(idx)
        with torch.autocast(self.device.type, dtype=self.amp_ctx, enabled=self.amp_ctx is not None):
            return self.model(x).reshape(-1).float(), order

    def _denormalize(self, full: np.ndarray) -> np.ndarray:
        return self.y_mean + self.y_std * full

    def evaluate(self, role: str) -> dict[str, Any]:
        """Metrics of split ``role``; must hold :attr:`score_key`."""
        return regression_metrics(self.predict(role), self.data[role].y.cpu())

    def _epoch_summary(self, val: dict[str, Any]) -> str:
        return f"val tau {val['tau']:.4f} r2 {val['r2']:.4f} mae {val['mae']:.4f}"

    def _final_results(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """``({"val": metrics, "test": metrics}, extra metrics.json fields)`` of the best checkpoint."""
        preds = {r: self.predict(r) for r in ("val", "test")}
        true = {r: self.data[r].y.cpu().numpy().astype(np.float64) for r in ("val", "test")}
        self._final_preds = (preds, true)
        return {r: regression_metrics(preds[r], true[r]) for r in ("val", "test")}, {"target": self.cfg.data.target}

    def _write_artifacts(self, metrics: dict[str, Any], res: dict[str, Any]) -> None:
        """Figures and the self-contained predictor of a finished run (main rank only)."""
        from wsl.train.plots import probe_grid, scatter_plot

        cfg = self.cfg
        preds, true = self._final_preds
        scatter_plot(preds["test"], true["test"], self.out / "test_scatter.png",
                     title=f"{cfg.model.name} on {self.zoo.name} (test)",
                     target=cfg.data.target.replace("_", " "), metrics=res["test"])
        if getattr(self.model, "probe_x", None) is not None:  # what the inversion made, to look at
            probe_grid(self.model.probe_x[cfg.probes.num:].cpu(), self.out / "inverted_probes.png",
                       title=f"inverted probes of {self.zoo.name} (column: target class)")
        self._write_predictor(metrics)
        self.log(f"test tau {res['test']['tau']:.4f} r2 {res['test']['r2']:.4f} mae {res['test']['mae']:.4f} "
                 f"-> {self.out}")

    def _probe_inputs(self) -> torch.Tensor:
        """The run's probe inputs (:func:`wsl.tasks.inversion.probe_set`); inverted ones from rank 0, broadcast."""
        from wsl.tasks.inversion import probe_set
        from wsl.tasks.probes import view_probe_shape

        pc, dc = self.cfg.probes, self.cfg.data
        shape = view_probe_shape(self.zoo.filter(arch=dc.arch) if dc.arch is not None else self.zoo)
        if pc.invert and not self.info.is_main:
            x = torch.empty(pc.total, *shape)
        else:
            t0 = time.perf_counter()
            x = probe_set(self.zoo, num=pc.num, seed=pc.seed, kind=pc.kind, invert=pc.invert,
                          invert_steps=pc.invert_steps, invert_tv=pc.invert_tv, split=dc.train_split,
                          target=dc.target, arch=dc.arch, shape=shape,
                          progress=self.info.is_main and self.cfg.train.progress)
            if pc.invert:
                self.log(f"probes: {pc.invert} inverted from the {dc.train_split} split's networks "
                         f"in {time.perf_counter() - t0:.1f}s")
        return D.broadcast(x, self.info) if pc.invert else x  # type: ignore[arg-type]

    def _stats_layout(self, kind: str, names: dict[str, str]) -> str:
        """``data.stats_layout``, with ``auto`` resolved: one block per tensor for one architecture, else buckets."""
        dc = self.cfg.data
        if kind != "stats" or dc.stats_layout != "auto":
            return str(dc.stats_layout)
        from wsl.tasks.generalization import select_rows
        from wsl.tasks.statnn import signatures

        views = [select_rows(self.zoo, s, dc.checkpoints, dc.target, dc.arch) for s in names.values()]
        sigs = {sg for v in views if len(v) for sg in signatures(v).values()}
        return "per_tensor" if len(sigs) == 1 else "buckets"

    def _probe_info(self, tr: Any, probe_x: torch.Tensor | None) -> dict[str, Any] | None:
        """The probe settings the model is built with (None without probe features)."""
        if probe_x is None:
            return None
        pc = self.cfg.probes
        width = tr.probes.shape[1] if isinstance(tr.probes, torch.Tensor) else None
        if width is None:  # learned probes: the feature width of the initial probes
            from wsl.nn.probed import probe_summary

            with torch.no_grad():
                width = probe_summary(tr.probes[torch.arange(1)](probe_x.to(self.device))).shape[1]
        return {"num": pc.num, "seed": pc.seed, "kind": pc.kind, "invert": pc.invert,
                "invert_steps": pc.invert_steps, "invert_tv": pc.invert_tv, "learn": pc.learn, "embed": pc.embed,
                "hidden": pc.hidden, "num_features": int(width), "input_shape": list(probe_x.shape[1:])}

    def _attach_probes(self, tr: Any, probe_x: torch.Tensor) -> None:
        """Give the built model its probe inputs and the normalisation of the training probe features."""
        self.model.set_probe_inputs(probe_x)
        feats = tr.probes
        if not isinstance(feats, torch.Tensor):  # learned: normalize with the features of the initial probes
            with torch.no_grad():
                feats = torch.cat([self.model.features(tr.probes[torch.arange(lo, min(lo + 512, len(tr)))])
                                   for lo in range(0, len(tr), 512)])
        self.model.set_normalization(feats)

    def _write_predictor(self, metrics: dict[str, Any]) -> None:
        from wsl.train.predictor import predictor_config, predictor_readme, save_predictor

        tr = self.data["train"]
        training = {"zoo": self.cfg.data.zoo, "zoo_name": self.zoo.name, "checkpoints": self.cfg.data.checkpoints,
                    "num_train": len(tr), "architectures": {g.arch_id: {"signature": g.space.signature,
                                                                        "num_parameters": g.space.num_parameters}
                                                            for g in tr.groups}}
        pcfg = predictor_config(self.cfg.model.name, self.cfg.model.params, self.input_info, self.cfg.data.target,
                                self.y_mean, self.y_std, training, metrics)
        pcfg["input"]["transform"] = self.cfg.data.transform if self.input_info.kind != "stats" else "none"
        space = self.input_info.space if self.input_info.kind in ("features", "stats") else None
        save_predictor(self.out / "predictor", model=self.model, config=pcfg, space=space,
                       readme=predictor_readme(pcfg))

"""``wsl train`` for the INR tasks: the shared :class:`~wsl.train.loop.Trainer` with INR data, losses and metrics.

``task: inr_classification``
    Predict the class of the image an INR encodes from its weights. Any
    invariant model (NP, HNP, NFT, NG-GNN, NG-T, ``flat_mlp``; ``render_cnn``
    reads the render instead) with one logit per class; loss cross-entropy;
    the best checkpoint has the highest validation accuracy.
``task: inr_editing``
    Predict a weight update ``dW`` so that the edited INR renders the edited
    image (:mod:`wsl.tasks.inr_editing`); the model's weight-update form
    (equivariant head) is used; loss the render MSE; the best checkpoint has the
    lowest validation MSE (``score = -mse``).

Everything else -- optimizer, schedule, early stopping, checkpoints,
``--resume``, DDP, throughput -- is the Trainer's. A finished run also
writes ``inr_model/`` (:mod:`wsl.train.inr_editor`: the model with its
normalisation, read by ``wsl edit``) and, for editing, ``edit_examples.png``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from wsl.errors import ConfigError
from wsl.train.loop import Trainer

__all__ = ["INRClassificationTrainer", "INREditingTrainer", "TRAINERS"]


class _INRTrainer(Trainer):
    """INR data for any model kind; subclasses set the task."""

    task_kind = "classification"

    def _make_splits(self, kind: str, names: dict[str, str], ckpt: dict[str, str], layout: str,
                     probe_x: Any) -> dict[str, Any]:
        from wsl.tasks.inr_data import check_disjoint_images, prepare_inr_split

        cfg, dc = self.cfg, self.cfg.data
        data: dict[str, Any] = {}
        scales = None
        for role, s in names.items():
            data[role] = prepare_inr_split(self.zoo, role, s, kind, task=self.task_kind, edit=cfg.inr.edit,
                                           checkpoints=ckpt[role], max_rows=dc.max_train if role == "train" else None,
                                           seed=cfg.train.seed, device=self.device, scales=scales,
                                           normalize=cfg.inr.normalize,
                                           sign_flip=cfg.augment.sign_flip and role == "train", arch=dc.arch)
            scales = data[role].scales  # val/test read with the training split's normalisation
        check_disjoint_images(data)
        sig = data["train"].space.signature
        for role in ("val", "test"):
            if data[role].space.signature != sig:
                raise ConfigError(f"{dc.zoo}: {role} split architecture {data[role].space.signature} differs "
                                  f"from train ({sig})")
        return data

    def _set_targets(self, tr: Any) -> None:
        self.y_mean, self.y_std = 0.0, 1.0

    def _input_facts(self, kind: str, tr: Any) -> tuple[int | None, Any]:
        edge_dim = None
        if kind == "graph":
            pm = tr.cache.per_model
            edge_dim = int(pm["edge_attr"].shape[-1]) if "edge_attr" in pm else max(
                int(tr.cache.shared["edge_width"].max()), 1)  # ragged storage
        return edge_dim, tr.space

    def _denormalize(self, full: np.ndarray) -> np.ndarray:
        return full

    def _write_artifacts(self, metrics: dict[str, Any], res: dict[str, Any]) -> None:
        from wsl.train.inr_editor import save_inr_model

        tr = self.data["train"]
        save_inr_model(self.out / "inr_model", model=self.model, task=self.cfg.task, model_name=self.cfg.model.name,
                       params=self.cfg.model.params, info=self.input_info, split=tr, edit=self.cfg.inr.edit,
                       zoo=self.cfg.data.zoo, zoo_name=self.zoo.name, metrics=metrics)


class INRClassificationTrainer(_INRTrainer):
    """Cross-entropy on the image class; selects the checkpoint with the best validation accuracy."""

    score_key = "accuracy"
    task_kind = "classification"

    def _input_info(self, info: Any) -> Any:
        classes = int(self.zoo.card.get("dataset", {}).get("num_classes") or 0)
        labels = torch.cat([d.labels for d in self.data.values()])
        info.out_features = max(classes, int(labels.max()) + 1)
        info.render_shape = list(self.data["train"].shape)
        return info

    def _step_loss(self, tr: Any, lidx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x, order = tr.inputs(lidx, self.cfg.augment, gen)
        with torch.autocast(self.device.type, dtype=self.amp_ctx, enabled=self.amp_ctx is not None):
            logits = self.ddp(x).float()
        return F.cross_entropy(logits, tr.labels[order.to(tr.labels.device)], reduction="none")

    def _eval_batch(self, split: Any, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, order = split.inputs(idx)
        with torch.autocast(self.device.type, dtype=self.amp_ctx, enabled=self.amp_ctx is not None):
            return self.model(x).float(), order

    def evaluate(self, role: str) -> dict[str, Any]:
        """``{"accuracy", "loss" (cross-entropy), "n"}`` of split ``role``."""
        logits = torch.from_numpy(self.predict(role))
        y = self.data[role].labels.cpu()
        return {"accuracy": float((logits.argmax(1) == y).double().mean()),
                "loss": float(F.cross_entropy(logits, y)), "n": int(y.numel())}

    def _epoch_summary(self, val: dict[str, Any]) -> str:
        return f"val accuracy {val['accuracy']:.4f} loss {val['loss']:.4f}"

    def _final_results(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {r: self.evaluate(r) for r in ("val", "test")}, {"task": self.cfg.task,
                                                                 "num_classes": self.input_info.out_features}

    def _write_artifacts(self, metrics: dict[str, Any], res: dict[str, Any]) -> None:
        super()._write_artifacts(metrics, res)
        self.log(f"test accuracy {res['test']['accuracy']:.4f} -> {self.out}")


class INREditingTrainer(_INRTrainer):
    """Render MSE of the edited INR against the edited image; selects the lowest validation MSE."""

    score_key = "neg_mse"
    task_kind = "editing"
    model_output = "update"

    def _input_info(self, info: Any) -> Any:
        info.output = "update"
        info.render_shape = list(self.data["train"].shape)
        return info

    def _edit_mse(self, split: Any, out: Any, order: torch.Tensor, raw: dict[str, torch.Tensor]) -> torch.Tensor:
        from wsl.tasks.inr_editing import decode_update, edit_mse, edited_weights

        upd = decode_update(split.space, out, int(order.numel()))
        weights = edited_weights(raw, upd, split.scales)
        return edit_mse(split.renderer, weights, split.targets[order.to(split.targets.device)])

    def _step_loss(self, tr: Any, lidx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x, order, raw = tr.batch(lidx, self.cfg.augment, gen)
        with torch.autocast(self.device.type, dtype=self.amp_ctx, enabled=self.amp_ctx is not None):
            out = self.ddp(x)
        return self._edit_mse(tr, out, order, raw)

    def _eval_batch(self, split: Any, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, order, raw = split.batch(idx)
        return self._edit_mse(split, self.model(x), order, raw).float(), order

    def evaluate(self, role: str) -> dict[str, Any]:
        """``{"mse", "neg_mse", "identity_mse", "n"}``: mean render MSE of the edited INRs vs the targets."""
        mse = float(np.mean(self.predict(role)))
        sp = self.data[role]
        ident = float((sp.before - sp.targets).square().flatten(1).mean(1).mean())
        return {"mse": mse, "neg_mse": -mse, "identity_mse": ident, "n": len(sp)}

    def _epoch_summary(self, val: dict[str, Any]) -> str:
        return f"val mse {val['mse']:.5f} (no edit {val['identity_mse']:.5f})"

    def _final_results(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {r: self.evaluate(r) for r in ("val", "test")}, {"task": self.cfg.task, "edit": self.cfg.inr.edit}

    def _write_artifacts(self, metrics: dict[str, Any], res: dict[str, Any]) -> None:
        super()._write_artifacts(metrics, res)
        self._examples(self.out / "edit_examples.png")
        self.log(f"test mse {res['test']['mse']:.5f} (no edit {res['test']['identity_mse']:.5f}) -> {self.out}")

    @torch.no_grad()
    def _examples(self, path: Any, count: int = 6) -> None:
        from wsl.tasks.inr_editing import decode_update, edited_weights
        from wsl.tasks.inr_plots import edit_grid

        sp = self.data["test"]
        idx = torch.arange(min(count, len(sp)))
        x, order, raw = sp.batch(idx)
        self.model.eval()
        edited = sp.renderer(edited_weights(raw, decode_update(sp.space, self.model(x), len(idx)), sp.scales))
        edit_grid({"INR": sp.before[idx], "edited INR": edited, f"target ({self.cfg.inr.edit})": sp.targets[idx]},
                  path, title=f"{self.cfg.model.name}: {self.cfg.inr.edit} (test INRs)")


TRAINERS: dict[str, type[Trainer]] = {"inr_classification": INRClassificationTrainer,
                                      "inr_editing": INREditingTrainer}

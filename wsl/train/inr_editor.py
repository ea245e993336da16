"""Trained INR meta-models as files: ``<run>/inr_model/``, and applying them (``wsl edit``).

Directory (``"wsl.inr_model/1"``)::

    config.json        {"format", "wsl_version", "task": "inr_classification" | "inr_editing", "edit",
                        "model": {"name", "params"},
                        "input": {"kind", "output", "out_features", "edge_dim", "render_shape"},
                        "scales": {tensor: r_t}, "shape": [grid], "arch": <wsl.arch/1 of the INRs>,
                        "signature": WeightSpace signature, "training": {...}, "metrics": {"val", "test"}}
    model.safetensors  the meta-model's weights
    space.json         the INRs' WeightSpace

:class:`INRModel` rebuilds the meta-model by name (:mod:`wsl.train.registry`)
and applies it to stacked INR weights of the training architecture:
:meth:`INRModel.edit` returns ``W + r * U(W / r)`` (editing),
:meth:`INRModel.logits` the class logits (classification).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsl.errors import WslError
from wsl.train.registry import InputInfo, build_model

__all__ = ["INR_MODEL_FORMAT", "INRModel", "load_inr_model", "save_inr_model"]

INR_MODEL_FORMAT = "wsl.inr_model/1"


class INRModelError(WslError):
    """An INR model directory that cannot be read, or INR weights it cannot take."""


def save_inr_model(directory: str | Path, *, model: nn.Module, task: str, model_name: str,
                   params: Mapping[str, Any], info: Any, split: Any, edit: str, zoo: str, zoo_name: str,
                   metrics: Mapping[str, Any]) -> Path:
    """Write ``directory`` (see the module docstring) atomically, file by file."""
    from wsl.io import atomic_open, atomic_save_safetensors
    from wsl.version import __version__

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"format": INR_MODEL_FORMAT, "wsl_version": __version__, "task": task,
           "edit": edit if task == "inr_editing" else None,
           "model": {"name": model_name, "params": dict(params)},
           "input": {"kind": info.kind, "output": info.output, "out_features": info.out_features,
                     "edge_dim": info.edge_dim, "render_shape": info.render_shape},
           "scales": {k: float(v) for k, v in split.scales.items()}, "shape": list(split.shape),
           "arch": split.description, "signature": split.space.signature,
           "training": {"zoo": zoo, "zoo_name": zoo_name, "num_train": len(split)},
           "metrics": {k: metrics.get(k) for k in ("val", "test", "best_epoch", "num_parameters")}}
    atomic_save_safetensors(dict(model.state_dict()), d / "model.safetensors", {"format": INR_MODEL_FORMAT})
    with atomic_open(d / "space.json", "w", encoding="utf-8") as fh:
        json.dump(split.space.to_json(), fh)
    with atomic_open(d / "config.json", "w", encoding="utf-8") as fh:
        json.dump(cfg, fh, indent=1, allow_nan=False)
    return d


class INRModel:
    """A trained INR meta-model with its normalisation (see the module docstring)."""

    def __init__(self, config: dict[str, Any], model: nn.Module, space: Any, path: Path | None = None) -> None:
        self.config, self.model, self.space, self.path = config, model.eval(), space, path
        self.task: str = config["task"]
        self.kind: str = config["input"]["kind"]
        self.scales: dict[str, float] = {k: float(v) for k, v in config["scales"].items()}
        self.shape = tuple(int(s) for s in config["shape"])

    @property
    def edit_name(self) -> str | None:
        """The edit an editing model was trained for."""
        return self.config.get("edit")

    def _inputs(self, stacked: Mapping[str, torch.Tensor]) -> Any:
        if self.kind == "render":
            from wsl.tasks.inr import Renderer

            return Renderer(self.config["arch"], self.shape)(stacked)
        self.space.check(stacked, batched=True, where=f"INR model {self.path or ''}")
        norm = {k: (v / self.scales[k] if k in self.scales else v) for k, v in stacked.items()}
        if self.kind == "graph":
            from wsl.graph import build

            return build(self.space, norm)
        if self.kind == "stats":
            from wsl.tasks.statnn import statnn_features

            return statnn_features(self.space, stacked, "per_tensor").to(torch.float32)
        from wsl.graph import WeightSpaceFeatures

        return WeightSpaceFeatures.from_state_dicts(self.space, norm)

    def accepts(self, space: Any) -> bool:
        """Whether INRs with this WeightSpace can be read."""
        return bool(space.signature == self.config["signature"])

    @torch.no_grad()
    def edit(self, stacked: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Edited weights ``W + r * U(W / r)`` of ``N`` stacked INRs ``{name: (N, *shape)}``."""
        from wsl.tasks.inr_editing import decode_update, edited_weights

        if self.task != "inr_editing":
            raise INRModelError(f"{self.path or 'this model'} was trained for {self.task}, not inr_editing")
        n = int(next(iter(stacked.values())).shape[0])
        upd = decode_update(self.space, self.model(self._inputs(stacked)), n)
        return edited_weights(stacked, upd, self.scales)

    @torch.no_grad()
    def logits(self, stacked: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Class logits ``(N, classes)`` of ``N`` stacked INRs."""
        if self.task != "inr_classification":
            raise INRModelError(f"{self.path or 'this model'} was trained for {self.task}, not inr_classification")
        return self.model(self._inputs(stacked)).float()

    def edit_module(self, module: nn.Module) -> nn.Module:
        """A new module of the INRs' architecture holding the edit of ``module``'s weights.

        ``module`` must have exactly the training INRs' architecture description (layers, widths,
        activations): a cheap check (no tracing) that is stricter than comparing weight spaces.
        """
        from wsl.archs.describe import build, describe, validate
        from wsl.errors import ArchitectureError

        try:
            got = validate(describe(module))
        except ArchitectureError as exc:
            raise INRModelError(f"cannot describe the INR to edit: {exc}") from None
        if got != validate(dict(self.config["arch"])):
            raise INRModelError(f"{self.path or 'this model'} edits INRs of architecture "
                                f"{json.dumps(self.config['arch'])}, got {json.dumps(got)}")
        sd = {k: v.detach().float().unsqueeze(0) for k, v in module.state_dict().items()}
        edited = {k: v[0] for k, v in self.edit(sd).items()}
        out = build(self.config["arch"])
        out.load_state_dict(edited)
        return out.eval()


def load_inr_model(directory: str | Path) -> INRModel:
    """Load ``<run>/inr_model`` (or the run directory holding it)."""
    from wsl.io import load_safetensors, local_path
    from wsl.space import WeightSpace

    d = Path(local_path(str(directory), repo_type="model"))
    if (d / "inr_model" / "config.json").is_file():
        d = d / "inr_model"
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise INRModelError(f"{directory}: not an INR model (no inr_model/config.json; train one with "
                            "`wsl train configs/inr/...`)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise INRModelError(f"{cfg_path}: cannot read: {exc}") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != INR_MODEL_FORMAT:
        raise INRModelError(f"{cfg_path}: field 'format' must be {INR_MODEL_FORMAT!r}")
    for key in ("task", "model", "input", "scales", "shape", "arch", "signature"):
        if key not in cfg:
            raise INRModelError(f"{cfg_path}: field {key!r} is missing")
    bad = [k for k, v in cfg["scales"].items() if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0)]
    if bad:
        raise INRModelError(f"{cfg_path}: scales.{bad[0]} must be a positive number")
    space = WeightSpace.from_json(json.loads((d / "space.json").read_text(encoding="utf-8")))
    inp = cfg["input"]
    info = InputInfo(kind=inp["kind"], space=space, edge_dim=inp.get("edge_dim"), output=inp.get("output", "invariant"),
                     out_features=int(inp.get("out_features", 1)), render_shape=inp.get("render_shape"))
    try:
        model = build_model(cfg["model"]["name"], info, cfg["model"].get("params", {}))
        model.load_state_dict(load_safetensors(d / "model.safetensors"), strict=True)
    except (WslError, RuntimeError) as exc:
        raise INRModelError(f"{d}: cannot rebuild model {cfg['model']['name']!r}: {exc}") from exc
    return INRModel(cfg, model, space, d)

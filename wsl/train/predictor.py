"""Self-contained predictors: a trained meta-model plus what it needs to read new weights.

The meta-model is built by name (:mod:`wsl.train.registry`). A predictor directory
(:func:`save_predictor` / :func:`load_predictor`)::

    config.json       {"format": "wsl.predictor/1", "model": {"name", "params"},
                       "input": {"kind", "accepts", "stats_layout", "num_features", "edge_dim"},
                       "target": {"name", "mean", "std"}, "training": {...}, "metrics": {...}}
    model.safetensors the meta-model's state_dict
    space.json        the WeightSpace spec of the training architecture (dense and stats models)
    README.md         model card

``input.accepts`` says which networks the predictor can read:
``{"type": "signatures", "signatures": [...]}`` (dense models and per-tensor
StatNN: exactly these ``WeightSpace.signature`` values) or ``{"type": "any"}``
(graph models and bucketed StatNN: any architecture ``wsl`` can trace).
Predictions are de-normalized: ``y = mean + std * model(x)``. A predictor
whose ``input.probes`` is set also reads probe features (:mod:`wsl.tasks.probes`):
it needs the network as a function (a module), not only its weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from wsl.errors import ConfigError, PredictionError
from wsl.train.registry import InputInfo, build_model

__all__ = ["PREDICTOR_FORMAT", "Predictor", "load_predictor", "predictor_config", "predictor_readme",
           "save_predictor"]

PREDICTOR_FORMAT = "wsl.predictor/1"


class Predictor:
    """A trained meta-model plus everything needed to apply it to new weights (see module docstring)."""

    def __init__(self, config: dict[str, Any], model: nn.Module, space: Any = None,
                 path: Path | None = None) -> None:
        self.config = config
        self.model = model.eval()
        self.space = space
        self.path = path
        self.kind: str = config["input"]["kind"]
        self.target: str = config["target"]["name"]
        self.mean = float(config["target"]["mean"])
        self.std = float(config["target"]["std"])

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.model.parameters()), torch.device("cpu"))

    def to(self, device: torch.device | str) -> "Predictor":
        self.model.to(device)
        return self

    def accepts(self, space: Any) -> bool:
        """Whether networks with this WeightSpace can be read by this predictor."""
        acc = self.config["input"]["accepts"]
        return acc["type"] == "any" or space.signature in acc["signatures"]

    @property
    def probes(self) -> dict[str, Any] | None:
        """The probe settings (``num``, ``seed``, ...) when the model also reads probe features, else None."""
        return self.config["input"].get("probes") or None

    def probe_features(self, module: nn.Module, input_shape: Any) -> torch.Tensor:
        """``(1, F)`` probe features of one network (``module`` must compute the weights being predicted)."""
        from wsl.nn.probed import probe_summary
        from wsl.tasks.probes import module_probe_outputs

        pr = self.probes
        if pr is None:
            raise PredictionError("this predictor reads no probe features")
        if pr.get("learn"):
            from wsl.tasks.probes import ProbeNets

            return ProbeNets.of_module(module, input_shape)  # type: ignore[return-value]
        return probe_summary(module_probe_outputs(module, input_shape, int(pr["num"]), int(pr["seed"]),
                                                  pr.get("kind", "uniform"), inputs=self.stored_probe_inputs))

    def zoo_probes(self, view: Any) -> torch.Tensor | None:
        """Probe features of the rows of a zoo view (None when this predictor reads none)."""
        if self.probes is None:
            return None
        from wsl.tasks.probes import probe_features

        pr = self.probes
        if pr.get("learn"):
            from wsl.tasks.probes import ProbeNets

            return ProbeNets.from_view(view, self.device, shape=pr.get("input_shape"))  # type: ignore[return-value]
        return probe_features(view, int(pr["num"]), int(pr["seed"]), shape=pr.get("input_shape"),
                              kind=pr.get("kind", "uniform"), inputs=self.stored_probe_inputs)

    @property
    def stored_probe_inputs(self) -> torch.Tensor | None:
        """Probe inputs saved with the model (inverted probes, :mod:`wsl.tasks.inversion`); None when they are
        redrawn from the predictor's probe seed and kind."""
        x = getattr(self.model, "probe_x", None)
        return x.detach().float().cpu() if isinstance(x, torch.Tensor) else None

    def inputs(self, space: Any, stacked: Mapping[str, torch.Tensor], probes: torch.Tensor | None = None) -> Any:
        """Model input for ``N`` stacked state_dicts of architecture ``space`` (+ their probe features)."""
        if self.probes is not None and probes is None:
            raise PredictionError(f"predictor {self.path or ''} also reads the network's outputs on probe inputs: "
                                  "it needs the architecture as a module (pass a module, or a checkpoint with "
                                  "its architecture), not weights alone")
        if not self.accepts(space):
            raise PredictionError(f"predictor {self.path or ''} reads architectures "
                                  f"{self.config['input']['accepts'].get('signatures')}; got {space.signature} "
                                  f"(trained on {self.config['training'].get('zoo_name')!r})")
        dev = self.device
        stacked = {k: v.to(dev) for k, v in stacked.items()}
        transform = self.config["input"].get("transform", "none")
        if transform != "none":
            from wsl.tasks.generalization import transform_weights

            stacked = transform_weights(dict(stacked), transform)
        if self.kind in ("features", "graph"):
            if self.kind == "features":
                from wsl.graph import WeightSpaceFeatures

                x: Any = WeightSpaceFeatures.from_state_dicts(space, stacked)
            else:
                from wsl.graph import build

                x = build(space, stacked)
            if self.probes is None:
                return x
            from wsl.nn.probed import Probed

            return Probed(x, probes.to(dev) if isinstance(probes, torch.Tensor) else probes)
        from wsl.tasks.statnn import statnn_features

        return statnn_features(space, stacked, self.config["input"]["stats_layout"]).to(torch.float32)

    @torch.no_grad()
    def predict(self, space: Any, stacked: Mapping[str, torch.Tensor], batch_size: int = 256,
                probes: torch.Tensor | None = None) -> np.ndarray:
        """Predicted target (de-normalized) for ``N`` stacked state_dicts of one architecture.

        ``probes``: their ``(N, F)`` probe features, needed when :attr:`probes` is set.

        Runs with the caller's torch thread setting (library code leaves process state alone). On CPU,
        float32 sums split over threads round differently: ``wsl predict``, ``wsl demo`` and the ``wsl
        serve`` workers run on one thread, so a Python caller gets their exact bits after
        ``torch.set_num_threads(1)``.
        """
        n = int(next(iter(stacked.values())).shape[0])
        out = []
        for lo in range(0, n, batch_size):
            x = self.inputs(space, {k: v[lo:lo + batch_size] for k, v in stacked.items()},
                            None if probes is None else probes[lo:lo + batch_size])
            out.append(self.model(x).reshape(-1).float().cpu())
        y = torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)
        return self.mean + self.std * y

    def predict_state_dicts(self, space: Any, state_dicts: list[Mapping[str, torch.Tensor]]) -> np.ndarray:
        """Predictions for a list of state_dicts of architecture ``space``."""
        return self.predict(space, space.stack(state_dicts))

    def predict_zoo(self, zoo: Any) -> np.ndarray:
        """Predictions for every row of a zoo view, in row order."""
        archs = zoo.column("arch")
        out = np.zeros(len(zoo))
        for aid in dict.fromkeys(archs.tolist()):
            pos = np.flatnonzero(archs == aid)
            out[pos] = self.predict(zoo[int(pos[0])].space, zoo.stacked(pos), probes=self.zoo_probes(zoo[pos]))
        return out

    def __repr__(self) -> str:
        return (f"Predictor(model={self.config['model']['name']!r}, target={self.target!r}, kind={self.kind!r}, "
                f"accepts={self.config['input']['accepts']['type']})")


def save_predictor(directory: str | Path, *, model: nn.Module, config: dict[str, Any], space: Any = None,
                   readme: str = "") -> Path:
    """Write a predictor directory (``config`` as described in the module docstring)."""
    from wsl.io import atomic_open, atomic_save_safetensors

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = dict(config)
    cfg["format"] = PREDICTOR_FORMAT
    atomic_save_safetensors(dict(model.state_dict()), d / "model.safetensors",
                            metadata={"format": PREDICTOR_FORMAT})
    if space is not None:
        with atomic_open(d / "space.json", "w", encoding="utf-8") as fh:
            json.dump(space.to_json(), fh)
    with atomic_open(d / "config.json", "w", encoding="utf-8") as fh:
        json.dump(cfg, fh, indent=1, allow_nan=False)
    with atomic_open(d / "README.md", "w", encoding="utf-8") as fh:
        fh.write(readme)
    return d


def load_predictor(directory: str | Path, device: torch.device | str | None = None) -> Predictor:
    """Load a predictor directory written by ``wsl train`` (``hf://`` URIs are resolved)."""
    from wsl.io import load_safetensors, local_path

    d = Path(local_path(str(directory), repo_type="model"))
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise PredictionError(f"{d}: not a predictor directory (config.json missing)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PredictionError(f"{cfg_path}: cannot read: {exc}") from exc
    if not isinstance(cfg, dict) or cfg.get("format") != PREDICTOR_FORMAT:
        raise PredictionError(f"{cfg_path}: field 'format' must be {PREDICTOR_FORMAT!r}")
    bad = [key for key in ("model", "input", "target") if not isinstance(cfg.get(key), dict)]
    if bad:
        raise PredictionError(f"{cfg_path}: field {bad[0]!r} missing or not an object")
    std = cfg["target"].get("std")
    if not isinstance(std, (int, float)) or not math.isfinite(std) or std <= 0:
        raise PredictionError(f"{cfg_path}: field 'target.std' must be a positive number, got {std!r}")
    space = None
    if (d / "space.json").is_file():
        from wsl.space import WeightSpace

        space = WeightSpace.from_json(json.loads((d / "space.json").read_text(encoding="utf-8")))
    inp = cfg["input"]
    info = InputInfo(kind=inp["kind"], space=space, num_features=inp.get("num_features"),
                     stats_layout=inp.get("stats_layout"), edge_dim=inp.get("edge_dim"), probes=inp.get("probes"))
    try:
        model = build_model(cfg["model"]["name"], info, cfg["model"].get("params", {}))
    except ConfigError as exc:
        raise PredictionError(f"{cfg_path}: cannot rebuild the model: {exc}") from exc
    sd = load_safetensors(d / "model.safetensors")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise PredictionError(f"{d / 'model.safetensors'}: does not match model {cfg['model']['name']!r}: {exc}") from exc
    model.eval()
    if device is not None:
        model.to(device)
    return Predictor(cfg, model, space, d)


def predictor_config(model_name: str, params: Mapping[str, Any], info: InputInfo, target: str, mean: float,
                     std: float, training: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The ``config.json`` of a predictor directory (see module docstring)."""
    from wsl.version import __version__

    exact = info.kind == "features" or (info.kind == "stats" and info.stats_layout == "per_tensor")
    if exact and info.space is None:
        raise PredictionError(f"predictor for {model_name!r}: the training architecture is unknown")
    accepts: dict[str, Any] = ({"type": "signatures", "signatures": [info.space.signature]} if exact
                               else {"type": "any"})
    return {"format": PREDICTOR_FORMAT, "wsl_version": __version__,
            "model": {"name": model_name, "params": dict(params)},
            "input": {"kind": info.kind, "accepts": accepts, "stats_layout": info.stats_layout,
                      "num_features": info.num_features, "edge_dim": info.edge_dim, "probes": info.probes},
            "target": {"name": target, "mean": mean, "std": std},
            "training": dict(training),
            "metrics": {k: metrics.get(k) for k in ("val", "test", "best_epoch", "num_parameters")}}


def predictor_readme(cfg: Mapping[str, Any]) -> str:
    """A short model card (markdown) for a predictor directory."""

    def fmt(v: Any) -> str:
        return "n/a" if v is None else f"{v:.3f}"
    m, tr, acc = cfg["metrics"], cfg["training"], cfg["input"]["accepts"]
    archs = ", ".join(f"`{a}` ({v['signature']}, {v['num_parameters']:,} params)"
                      for a, v in tr.get("architectures", {}).items())
    if acc["type"] == "any":
        reads = "any architecture `wsl` can trace (graph / bucketed-statistics input)"
    else:
        reads = "only networks whose WeightSpace signature is " + ", ".join(f"`{s}`" for s in acc["signatures"])
    rows = "\n".join(f"| {s} | {fmt(m[s].get('tau'))} | {fmt(m[s].get('r2'))} | {fmt(m[s].get('mae'))} | "
                     f"{m[s].get('n')} |" for s in ("val", "test") if isinstance(m.get(s), dict))
    return f"""# wsl generalization predictor: {cfg['model']['name']}

Predicts **{cfg['target']['name']}** of a trained network from its weights alone.

- Meta-model: `{cfg['model']['name']}` ({cfg['input']['kind']} input), arguments `{json.dumps(cfg['model']['params'])}`,
  {m.get('num_parameters') or 0:,} parameters.
- Trained on zoo `{tr.get('zoo_name')}` ({tr.get('zoo')}), {tr.get('num_train')} training rows,
  checkpoints: {tr.get('checkpoints')}; architectures: {archs}.
- Intended inputs: {reads}. Networks far from the training zoo (other data sets, sizes,
  training recipes) are out of distribution: treat predictions as rankings at best.
- Target normalization: `y = {cfg['target']['mean']:.6g} + {cfg['target']['std']:.6g} * output`.

| split | Kendall tau | R^2 | MAE | n |
|---|---|---|---|---|
{rows}

Load with `wsl.train.predictor.load_predictor(dir)`; `Predictor.predict(space, stacked)` or
`Predictor.predict_zoo(zoo)`.
"""

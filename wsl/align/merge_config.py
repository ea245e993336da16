"""``wsl merge merge.yaml``: a merge described as a file, in the spirit of mergekit's configs.

.. code-block:: yaml

    method: ties                  # mean | aligned_mean | barycentre | task_arithmetic | ties | dare | slerp
    parameters: {density: 0.3, scale: 1.0}
    arch: small_cnn               # optional: checkpoints written by wsl carry their architecture
    base: runs/base.safetensors   # task_arithmetic, ties and dare need one
    models:
      - runs/a.safetensors
      - hf://org/repo/model.safetensors
      - {zoo: zoos-out/digits-cnn-gs, row: 17}          # a zoo row
      - {zoo: zoos-out/digits-cnn-gs, model_id: m0042}  # a zoo model's last checkpoint

Relative paths are read from the current directory, like every other path
``wsl`` is given (and like ``data.zoo`` in training configs). Every model must
have the weight space of the first one; the first difference is reported
otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsl.errors import ConfigError, SpaceMismatchError
from wsl.space import WeightSpace

from wsl.align.merge import make_method
from wsl.align.space_match import first_difference

_KEYS = {"method", "parameters", "arch", "base", "models"}


@dataclass
class MergeConfig:
    method: str
    models: list[Any]
    parameters: dict[str, Any] = field(default_factory=dict)
    arch: Any = None
    base: Any = None


def load_merge_config(path: str | Path) -> MergeConfig:
    from wsl.io.yaml_file import read_yaml_mapping

    p = Path(path)
    raw = read_yaml_mapping(p, what="merge config")
    bad = sorted(set(raw) - _KEYS)
    if bad:
        raise ConfigError(f"{p}: unknown key {bad[0]!r}; valid: {', '.join(sorted(_KEYS))}")
    for key in ("method", "models"):
        if key not in raw:
            raise ConfigError(f"{p}: '{key}' is required")
    if not isinstance(raw["models"], list) or not raw["models"]:
        raise ConfigError(f"{p}: 'models' must be a non-empty list of paths, URIs or {{zoo:, row:}} entries")
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{p}: 'parameters' must be a mapping")
    make_method(str(raw["method"]), params)  # validates the name and its parameters early
    return MergeConfig(str(raw["method"]), list(raw["models"]), dict(params), raw.get("arch"), raw.get("base"))


def load_entry(entry: Any, cfg: MergeConfig, what: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """(module with its weights, state_dict) of one ``models``/``base`` entry."""
    from wsl.io import load_model, local_path

    if isinstance(entry, str):
        module, sd = load_model(local_path(entry), cfg.arch)
        return module, sd
    if isinstance(entry, dict) and "zoo" in entry:
        from wsl.zoo import load_zoo

        zoo = load_zoo(local_path(str(entry["zoo"])))
        if "row" in entry:
            row = int(entry["row"])
            if not -len(zoo) <= row < len(zoo):
                raise ConfigError(f"{what}: row {row} is out of range (the zoo has {len(zoo)} rows)")
            m = zoo[row]
        elif "model_id" in entry:
            part = zoo.filter(model_id=str(entry["model_id"]))
            if not len(part):
                raise ConfigError(f"{what}: the zoo has no model_id {entry['model_id']!r}")
            m = part.latest()[0]
        else:
            raise ConfigError(f"{what}: a zoo entry needs 'row' or 'model_id'")
        return m.module(), m.state_dict()
    raise ConfigError(f"{what}: expected a path, an hf:// URI or {{zoo: PATH, row: N}}, got {entry!r}")


def run_merge(cfg: MergeConfig) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, Any]]:
    """Load every model, check they share one weight space, merge; return (module, merged, report)."""
    loaded = [load_entry(e, cfg, f"models[{i}]") for i, e in enumerate(cfg.models)]
    module = loaded[0][0]
    space = WeightSpace.from_module(module)
    for i, (m, _) in enumerate(loaded[1:], start=1):
        diff = first_difference(space, WeightSpace.from_module(m))
        if diff is not None:
            raise SpaceMismatchError(f"models[{i}] and models[0] have different weight spaces: {diff}")
    base = load_entry(cfg.base, cfg, "base")[1] if cfg.base is not None else None
    method = make_method(cfg.method, cfg.parameters)
    merged = method.merge([sd for _, sd in loaded], base, space)
    report = {"method": cfg.method, "parameters": cfg.parameters, "models": len(loaded),
              "base": cfg.base is not None}
    if getattr(method, "iterations", 0):
        report["iterations"] = method.iterations
    return module, merged, report

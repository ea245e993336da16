"""Baselines of the INR tasks that are not trained by the meta-model Trainer.

Classification: ``statnn_gbt`` -- StatNN features of the raw weights
(:mod:`wsl.tasks.statnn`, per tensor: mean, std, 5 percentiles) into
scikit-learn's ``HistGradientBoostingClassifier`` (100 rounds of 10 trees,
learning rate 0.1, 31 leaves, single-threaded), fitted on train, reported on val and test.

Editing: ``identity`` -- no edit (``W' = W``): the MSE between the render and
the target, the floor every editing model must beat; ``output_affine`` -- one
affine map of the output for every INR, ``render' = a render + b`` with
``(a, b)`` fitted by least squares on the training split, realised exactly in
weight space (last layer ``W_L' = a W_L``, ``b_L' = a b_L + b``): the
input-independent edit a meta-model must beat to have learned more than a
brightness/contrast change; ``gd_fit`` -- per-INR
gradient descent on the weights to the target
(:func:`wsl.tasks.inr_editing.fit_to_targets`, ``steps`` Adam steps at
``lr``): the cost reference, what fitting a new INR takes per edit.

Every function returns ``{"val": {...}, "test": {...}, ...}`` in the shape of
the Trainer's ``metrics.json``, plus ``models_per_s`` (INRs processed per
second of fitting; ``None`` where nothing is fitted).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from wsl.errors import ConfigError

__all__ = ["INR_BASELINES", "run_inr_baseline"]

INR_BASELINES = {"inr_classification": ("statnn_gbt",), "inr_editing": ("identity", "output_affine", "gd_fit")}


def _splits(zoo: Any, kind: str, task: str, edit: str | None, checkpoints: str, splits: tuple[str, str, str],
            arch: str | None, seed: int, max_train: int | None = None) -> dict[str, Any]:
    from wsl.tasks.inr_data import check_disjoint_images, prepare_inr_split

    data = {role: prepare_inr_split(zoo, role, s, kind, task=task, edit=edit, checkpoints=checkpoints, seed=seed,
                                    arch=arch, max_rows=max_train if role == "train" else None)
            for role, s in zip(("train", "val", "test"), splits)}
    check_disjoint_images(data)
    return data


def statnn_classifier(zoo: Any, seed: int = 0, *, checkpoints: str = "last",
                      splits: tuple[str, str, str] = ("train", "val", "test"), arch: str | None = None,
                      max_train: int | None = None) -> dict[str, Any]:
    """StatNN + gradient boosting (see the module docstring)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    data = _splits(zoo, "stats", "classification", None, checkpoints, splits, arch, seed, max_train)
    x = {r: d.cache.double().cpu().numpy() for r, d in data.items()}
    y = {r: d.labels.cpu().numpy() for r, d in data.items()}
    n = len(y["train"])
    clf = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_leaf_nodes=31,
                                         min_samples_leaf=max(2, min(20, n // 20)), early_stopping=False,
                                         random_state=seed)
    t0 = time.perf_counter()
    with threadpool_limits(1):
        clf.fit(x["train"], y["train"])
        fit_s = time.perf_counter() - t0
        out: dict[str, Any] = {r: {"accuracy": float((clf.predict(x[r]) == y[r]).mean()), "n": int(len(y[r]))}
                               for r in ("val", "test")}
    out.update(n_train=n, num_features=int(x["train"].shape[1]), fit_seconds=fit_s, models_per_s=n / fit_s,
               regressor="HistGradientBoostingClassifier")
    return out


def _mse(before: Any, targets: Any) -> float:
    return float((before - targets).square().flatten(1).mean(1).mean())


def identity_edit(zoo: Any, edit: str, seed: int = 0, *, checkpoints: str = "last",
                  splits: tuple[str, str, str] = ("train", "val", "test"), arch: str | None = None) -> dict[str, Any]:
    """The no-edit reference: render MSE of the unchanged INRs against the edit targets."""
    data = _splits(zoo, "render", "editing", edit, checkpoints, splits, arch, seed)
    out: dict[str, Any] = {}
    for r in ("val", "test"):
        m = _mse(data[r].before, data[r].targets)
        out[r] = {"mse": m, "identity_mse": m, "n": len(data[r])}
    out.update(n_train=len(data["train"]), models_per_s=None)
    return out


def affine_output(space: Any, description: dict[str, Any], stacked: dict[str, Any], a: float,
                  b: float) -> dict[str, Any]:
    """Weights whose output is ``a * f(x) + b``: the last linear layer's weight times ``a``, its bias ``a b_L + b``."""
    from wsl.errors import WslError

    layers = description.get("layers", [])
    if not layers or layers[-1].get("type") != "linear":
        raise WslError("output_affine: the network must end in a linear layer (its output is then affine in it)")
    out = {g.id for g in space.groups if g.kind == "output"}
    touched = []
    res = dict(stacked)
    for name, t in space.tensors.items():
        if t.axes and t.axes[0][0][0][0] in out and t.role in ("weight", "bias"):
            res[name] = a * stacked[name] + (b if t.role == "bias" else 0.0)
            touched.append(t.role)
    if sorted(touched) != ["bias", "weight"]:
        raise WslError(f"output_affine: expected one output weight and bias, found {touched}")
    return res


def output_affine_edit(zoo: Any, edit: str, seed: int = 0, *, checkpoints: str = "last",
                       splits: tuple[str, str, str] = ("train", "val", "test"), arch: str | None = None,
                       max_train: int | None = None) -> dict[str, Any]:
    """The input-independent reference: one affine map of every INR's output (see the module docstring)."""
    import torch

    from wsl.tasks.inr_editing import edit_mse

    data = _splits(zoo, "render", "editing", edit, checkpoints, splits, arch, seed, max_train)
    tr = data["train"]
    x, y = tr.before.flatten().double(), tr.targets.flatten().double()
    sol = torch.linalg.lstsq(torch.stack([x, torch.ones_like(x)], 1), y.unsqueeze(1)).solution.flatten()
    a, b = float(sol[0]), float(sol[1])
    out: dict[str, Any] = {}
    for r in ("val", "test"):
        d = data[r]
        with torch.no_grad():
            mse = edit_mse(d.renderer, affine_output(d.space, d.description, d.raw, a, b), d.targets)
        out[r] = {"mse": float(mse.mean()), "identity_mse": _mse(d.before, d.targets), "n": len(d)}
    out.update(n_train=len(tr), a=a, b=b, models_per_s=None)
    return out


def gd_fit_edit(zoo: Any, edit: str, seed: int = 0, *, steps: int = 100, lr: float = 1e-3,
                checkpoints: str = "last", splits: tuple[str, str, str] = ("train", "val", "test"),
                arch: str | None = None) -> dict[str, Any]:
    """The cost reference: fit every val/test INR to its target by gradient descent (no training split used)."""
    import torch

    from wsl.tasks.inr_editing import fit_to_targets

    torch.manual_seed(seed)
    data = _splits(zoo, "render", "editing", edit, checkpoints, splits, arch, seed)
    out: dict[str, Any] = {}
    seconds = count = 0.0
    for r in ("val", "test"):
        d = data[r]
        res = fit_to_targets(d.renderer, d.raw, d.targets, steps=steps, lr=lr)
        out[r] = {"mse": float(res["mse"].mean()), "identity_mse": _mse(d.before, d.targets), "n": len(d)}
        seconds += res["seconds"]
        count += len(d)
    out.update(n_train=0, steps=steps, lr=lr, models_per_s=count / max(seconds, 1e-9),
               seconds_per_inr=seconds / max(count, 1))
    return out


def run_inr_baseline(task: str, name: str, zoo: Any, params: dict[str, Any], *, seed: int = 0, edit: str = "dilate",
                     checkpoints: str = "last", splits: tuple[str, str, str] = ("train", "val", "test"),
                     arch: str | None = None, max_train: int | None = None) -> dict[str, Any]:
    """Run baseline ``name`` of ``task`` (see :data:`INR_BASELINES`) with its ``params``."""
    if name not in INR_BASELINES.get(task, ()):
        raise ConfigError(f"task {task}: unknown baseline {name!r}; valid: {', '.join(INR_BASELINES.get(task, ()))}")
    allowed = {"gd_fit": {"steps", "lr"}}.get(name, set())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigError(f"baseline {name!r}: unknown key 'model.{unknown[0]}'"
                          + (f"; valid: {', '.join(sorted(allowed))}" if allowed else " (it takes no arguments)"))
    kw = {"checkpoints": checkpoints, "splits": splits, "arch": arch}
    if name == "statnn_gbt":
        res = statnn_classifier(zoo, seed, max_train=max_train, **kw)
    elif name == "identity":
        res = identity_edit(zoo, edit, seed, **kw)
    elif name == "output_affine":
        res = output_affine_edit(zoo, edit, seed, max_train=max_train, **kw)
    else:
        steps, lr = params.get("steps", 100), params.get("lr", 1e-3)
        if not (isinstance(steps, int) and steps >= 1) or not (isinstance(lr, (int, float)) and lr > 0):
            raise ConfigError(f"baseline gd_fit: model.steps must be an int >= 1 and model.lr > 0, got {steps}, {lr}")
        res = gd_fit_edit(zoo, edit, seed, steps=steps, lr=float(lr), **kw)
    res.update(name=name, task=task, edit=edit if task == "inr_editing" else None)
    return res


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0

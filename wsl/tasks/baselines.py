"""Baselines for generalization prediction: StatNN and hyperparameters-only.

*StatNN* (Unterthiner et al. 2020): seven statistics of every tensor -- mean,
standard deviation (population, ``ddof=0``) and the 0/25/50/75/100 percentiles
(linear interpolation, as ``numpy.percentile``; :func:`wsl.nn.stats.tensor_stats`) -- concatenated.

Two feature layouts (:func:`statnn_features`):

``per_tensor``
    One block of 7 per floating-point state_dict entry, in state_dict order
    (weights, biases, normalization parameters and statistics; integer
    entries such as ``num_batches_tracked`` are skipped). Needs a single
    architecture: this is the layout of the original paper.
``buckets``
    Fixed length for any architecture (used for mixed zoos). Tensors are
    grouped by role and depth: weights of the *first* layer, of all *middle*
    layers pooled together, of the *last* layer; the same three buckets for
    biases; all normalization scales pooled; all normalization shifts pooled
    (6 + 2 buckets x 7 statistics; an empty bucket is all zeros), followed by
    the number of weight tensors, the number of normalization layers and
    ``log10`` of the parameter count (59 features). Statistics of a pooled
    bucket are over the concatenated values.

Regressors (:func:`fit_baseline`): ``statnn_gbt`` -- scikit-learn's
``HistGradientBoostingRegressor`` (histogram gradient boosting: 300 trees,
learning rate 0.05, 31 leaves, at least ``min(20, n_train // 20)`` (>= 2)
rows per leaf, no early stopping) on StatNN features;
``statnn_linear`` -- ``RidgeCV`` (alphas 1e-3..1e3, internal CV on train) on
standardized StatNN features; ``hparams_gbt`` -- the same gradient boosting
on the training hyperparameters only (:class:`HParamEncoder`). Fitting runs
single-threaded (``threadpoolctl``): OpenMP thread pools of scikit-learn's
boosting are many times slower on busy small machines. All are fitted
on the train split and reported on val and test; nothing is tuned on val.
"""

from __future__ import annotations

import math
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from wsl.errors import ConfigError, WslError
from wsl.nn.stats import tensor_stats

__all__ = ["BASELINES", "HParamEncoder", "fit_baseline", "signatures", "statnn_features", "statnn_matrix"]

BASELINES = ("statnn_gbt", "statnn_linear", "hparams_gbt")
LOG_HPARAMS = ("lr", "learning_rate", "l2", "l2reg", "wd", "weight_decay", "init_std")
NUM_BUCKET_FEATURES = 8 * 7 + 3


def _float_names(space: Any, stacked: Mapping[str, torch.Tensor]) -> list[str]:
    names = list(space.tensors) if space is not None else list(stacked)
    return [n for n in names if stacked[n].is_floating_point()]


def statnn_features(space: Any, stacked: Mapping[str, torch.Tensor], layout: str = "per_tensor") -> torch.Tensor:
    """StatNN features ``(N, F)`` (float64) of ``N`` stacked models of one architecture."""
    if layout == "per_tensor":
        names = _float_names(space, stacked)
        n = int(stacked[names[0]].shape[0])
        return torch.cat([tensor_stats(stacked[k].reshape(n, -1)) for k in names], dim=1)
    if layout != "buckets":
        raise ConfigError(f"statnn_features: layout must be 'per_tensor' or 'buckets', got {layout!r}")
    if space is None:
        raise WslError("statnn_features: the 'buckets' layout needs the WeightSpace (tensor roles)")
    roles = {t.name: t.role for t in space.tensors.values()}
    n = int(next(iter(stacked.values())).shape[0])

    def flat(names: Sequence[str]) -> torch.Tensor:
        if not names:
            return torch.zeros(n, 0, dtype=torch.float64, device=next(iter(stacked.values())).device)
        return torch.cat([stacked[k].reshape(n, -1).to(torch.float64) for k in names], dim=1)

    blocks = []
    for role in ("weight", "bias"):
        names = [k for k in space.tensors if roles[k] == role]
        first, middle, last = names[:1], names[1:-1], names[-1:] if len(names) > 1 else []
        blocks += [tensor_stats(flat(first)), tensor_stats(flat(middle)), tensor_stats(flat(last))]
    for role in ("norm_scale", "norm_shift"):
        blocks.append(tensor_stats(flat([k for k in space.tensors if roles[k] == role])))
    n_weight = sum(r == "weight" for r in roles.values())
    n_norm = sum(r == "norm_scale" for r in roles.values())
    count = torch.tensor([n_weight, n_norm, math.log10(max(space.num_parameters, 1))], dtype=torch.float64)
    blocks.append(count.to(blocks[0].device).expand(n, 3))
    return torch.cat(blocks, dim=1)


def signatures(zoo: Any) -> dict[str, str]:
    """``{arch_id: WeightSpace signature}`` of the architectures used by the rows of a zoo view."""
    archs = zoo.column("arch")
    return {str(a): zoo[int(np.flatnonzero(archs == a)[0])].space.signature for a in dict.fromkeys(archs.tolist())}


def statnn_matrix(zoo: Any, layout: str = "auto", chunk: int = 512) -> np.ndarray:
    """StatNN features of every row of a zoo view, ``(len(zoo), F)`` float64, in row order.

    ``auto`` picks ``per_tensor`` when every row has the same weight space
    (signature), else ``buckets``.
    """
    archs = zoo.column("arch")
    sigs = set(signatures(zoo).values())
    if layout == "auto":
        layout = "per_tensor" if len(sigs) <= 1 else "buckets"
    if layout == "per_tensor" and len(sigs) > 1:
        raise ConfigError(f"{zoo.root}: StatNN layout 'per_tensor' needs one architecture, the selection has "
                          f"{sorted(set(archs.tolist()))}; use layout 'buckets'")
    out: np.ndarray | None = None
    for aid in dict.fromkeys(archs.tolist()):
        pos = np.flatnonzero(archs == aid)
        space = zoo[int(pos[0])].space
        for lo in range(0, len(pos), chunk):
            sel = pos[lo:lo + chunk]
            feats = statnn_features(space, zoo.stacked(sel), layout).numpy()
            if out is None:
                out = np.zeros((len(zoo), feats.shape[1]), dtype=np.float64)
            out[sel] = feats
    if out is None:
        raise WslError(f"{zoo.root}: no rows to compute StatNN features for")
    return out


class HParamEncoder:
    """Hyperparameter dicts -> numeric matrix: numbers as is (``log10`` for lr/l2/wd/init_std),
    anything else one-hot over the values seen in training (unseen -> all zeros); missing -> NaN.
    Nested dicts are flattened with dots."""

    def __init__(self) -> None:
        self.numeric: list[str] = []
        self.categorical: dict[str, list[str]] = {}

    @staticmethod
    def _flat(hp: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in hp.items():
            if isinstance(v, Mapping):
                out.update(HParamEncoder._flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    def fit(self, hparams: Sequence[Mapping[str, Any]]) -> "HParamEncoder":
        flat = [self._flat(h) for h in hparams]
        keys = sorted({k for h in flat for k in h})
        for k in keys:
            vals = [h[k] for h in flat if k in h and h[k] is not None]
            if vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                self.numeric.append(k)
            elif vals:
                self.categorical[k] = sorted({str(v) for v in vals})
        if not self.numeric and not self.categorical:
            raise WslError("hyperparameter baseline: the training rows have no hyperparameters (field 'hparams')")
        return self

    def _num(self, k: str, v: Any) -> float:
        if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
            return math.nan
        if k.split(".")[-1].lower() in LOG_HPARAMS:
            return math.log10(v) if v > 0 else -12.0
        return float(v)

    def transform(self, hparams: Sequence[Mapping[str, Any]]) -> np.ndarray:
        rows = []
        for h in hparams:
            f = self._flat(h)
            row = [self._num(k, f.get(k)) for k in self.numeric]
            for k, cats in self.categorical.items():
                s = None if f.get(k) is None else str(f[k])
                row += [1.0 if s == c else 0.0 for c in cats]
            rows.append(row)
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), -1)

    @property
    def feature_names(self) -> list[str]:
        return self.numeric + [f"{k}={c}" for k, cats in self.categorical.items() for c in cats]


def _regressor(kind: str, seed: int, n_train: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "gbt":
        return HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, max_leaf_nodes=31,
                                             min_samples_leaf=max(2, min(20, n_train // 20)),
                                             early_stopping=False, random_state=seed)
    return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))


def fit_baseline(name: str, zoo: Any, seed: int = 0, *, target: str = "test_accuracy", checkpoints: str = "last",
                 layout: str = "auto", splits: tuple[str, str, str] = ("train", "val", "test"),
                 return_predictions: bool = False, train_checkpoints: str = "same", probes: int = 0,
                 probe_seed: int = 0, probe_kind: str = "mixed", probe_invert: int = 0, invert_steps: int = 300,
                 invert_tv: float = 0.5) -> dict[str, Any]:
    """Fit baseline ``name`` (one of :data:`BASELINES`) on a zoo's train split.

    ``probes + probe_invert > 0`` appends the probe features of every row on
    the probe set of :func:`wsl.tasks.inversion.probe_set` (``probes``
    synthetic ones, ``probe_invert`` inverted from the train split's
    networks) to the baseline's features.

    ``zoo`` is a :class:`~wsl.zoo.Zoo` or a path. Returns ``{"name", "val":
    {tau, r2, mae, n}, "test": {...}, "n_train", "num_features",
    "fit_seconds", "regressor", "layout"}`` (plus ``"predictions"`` with
    ``{split: (pred, true)}`` arrays if ``return_predictions``).
    """
    from wsl.tasks.generalization import select_rows, target_values

    if name not in BASELINES:
        raise ConfigError(f"fit_baseline: unknown baseline {name!r}; valid: {', '.join(BASELINES)}")
    if not hasattr(zoo, "stacked"):
        from wsl.zoo import load_zoo

        zoo = load_zoo(zoo)
    t0 = time.perf_counter()
    views = {s: select_rows(zoo, s, train_checkpoints if s == splits[0] and train_checkpoints != "same"
                            else checkpoints, target) for s in splits}
    if name.startswith("statnn"):
        sigs = {sg for v in views.values() if len(v) for sg in signatures(v).values()}
        lay = layout if layout != "auto" else ("per_tensor" if len(sigs) == 1 else "buckets")
        feats = {s: statnn_matrix(v, lay) for s, v in views.items()}
    else:
        lay = "hparams"
        enc = HParamEncoder().fit([r["hparams"] for r in views[splits[0]].rows])
        feats = {s: enc.transform([r["hparams"] for r in v.rows]) for s, v in views.items()}
    if probes + probe_invert > 0:
        from wsl.tasks.inversion import probe_set
        from wsl.tasks.probes import probe_features, zoo_probe_shape

        shape = zoo_probe_shape(zoo._store, list(dict.fromkeys(a for v in views.values()
                                                                for a in v.column("arch").tolist())))
        x = probe_set(zoo, num=probes, seed=probe_seed, kind=probe_kind, invert=probe_invert,
                      invert_steps=invert_steps, invert_tv=invert_tv, split=splits[0], target=target, shape=shape)
        feats = {s: np.concatenate([f, probe_features(views[s], shape=shape, inputs=x).double().numpy()], 1)
                 for s, f in feats.items()}
        lay = f"{lay}+probes{probes}-{probe_kind}" + (f"+inverted{probe_invert}" if probe_invert else "")
    ys = {s: target_values(v, target) for s, v in views.items()}
    reg = _regressor("linear" if name == "statnn_linear" else "gbt", seed, len(ys[splits[0]]))
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        out = _fit_eval(reg, name, feats, ys, splits, lay, t0, return_predictions)
    out["target"] = target
    return out


def _fit_eval(reg: Any, name: str, feats: dict[str, np.ndarray], ys: dict[str, np.ndarray],
              splits: tuple[str, str, str], lay: str, t0: float, return_predictions: bool) -> dict[str, Any]:
    from wsl.tasks.metrics import regression_metrics

    reg.fit(np.nan_to_num(feats[splits[0]], nan=0.0) if name == "statnn_linear" else feats[splits[0]], ys[splits[0]])
    out: dict[str, Any] = {"name": name, "layout": lay, "n_train": int(len(ys[splits[0]])),
                           "num_features": int(feats[splits[0]].shape[1]),
                           "regressor": "RidgeCV+StandardScaler" if name == "statnn_linear"
                           else "HistGradientBoostingRegressor"}
    preds = {}
    for role, s in zip(("val", "test"), splits[1:]):
        x = np.nan_to_num(feats[s], nan=0.0) if name == "statnn_linear" else feats[s]
        p = reg.predict(x) if len(x) else np.zeros(0)
        out[role] = regression_metrics(p, ys[s]) if len(x) else {"n": 0}
        preds[role] = (p, ys[s])
    out["fit_seconds"] = time.perf_counter() - t0
    if return_predictions:
        out["predictions"] = preds
    return out

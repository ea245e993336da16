"""Baselines for generalization prediction: StatNN and hyperparameters-only.

*StatNN* features (Unterthiner et al. 2020) are computed by :mod:`wsl.tasks.statnn`.

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

from wsl.errors import ConfigError, WslError
from wsl.tasks.statnn import signatures, statnn_matrix

__all__ = ["BASELINES", "HParamEncoder", "fit_baseline"]

BASELINES = ("statnn_gbt", "statnn_linear", "hparams_gbt")
LOG_HPARAMS = ("lr", "learning_rate", "l2", "l2reg", "wd", "weight_decay", "init_std")


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

        shape = zoo_probe_shape(zoo.store, list(dict.fromkeys(a for v in views.values()
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

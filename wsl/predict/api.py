"""``wsl.predict``: the predicted test accuracy of a network, from its weights alone."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from wsl.errors import PredictionError, WslError
from wsl.predict.family import check_family
from wsl.predict.match import match_tensors
from wsl.predict.shapes import trace_for_prediction
from wsl.predict.shipped import resolve_predictor_ref, shipped
from wsl.space import WeightSpace
from wsl.train.predictor import Predictor, load_predictor

Source = nn.Module | Mapping[str, torch.Tensor] | str | os.PathLike[str]


@dataclass
class Prediction:
    """One network's predicted generalization (``to_json`` gives the CLI/HTTP form)."""

    source: str
    predicted_test_accuracy: float
    predictor: str
    interval: tuple[float, float] | None = None
    interval_level: float | None = None
    architecture: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    target: str = "test_accuracy"
    raw_prediction: float | None = None
    interval_coverage: float | None = None
    renamed_tensors: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["interval"] = list(self.interval) if self.interval else None
        return d


_CACHE: dict[str, Predictor] = {}


def get_predictor(ref: str | Path | Predictor) -> Predictor:
    """A loaded predictor for a directory, ``hf://`` URI or shipped name (cached)."""
    if isinstance(ref, Predictor):
        return ref
    key = resolve_predictor_ref(str(ref))
    if key not in _CACHE:
        p = load_predictor(key)
        p.name = (p.config.get("shipped") or {}).get("name") or Path(key).name  # type: ignore[attr-defined]
        _CACHE[key] = p
    return _CACHE[key]


def _name(p: Predictor) -> str:
    return str(getattr(p, "name", None) or p.config.get("model", {}).get("name"))


def _space_for_state_dict(sd: Mapping[str, torch.Tensor]) -> WeightSpace | None:
    """The training space of a shipped dense predictor whose tensors match ``sd`` exactly."""
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    for _, path, _ in shipped():
        p = get_predictor(path)
        if p.space is not None and p.space.shapes == shapes:
            return p.space  # type: ignore[no-any-return]
    return None


def _trace(module: nn.Module, example_input: Any, predictor: Any) -> WeightSpace:
    configs = [get_predictor(predictor).config] if predictor is not None else [c for _, _, c in shipped()]
    return trace_for_prediction(module, example_input, configs)


def load_source(source: Source, arch: Any = None, *, example_input: Any = None, allow_code: bool = True
                ) -> tuple[str, dict[str, torch.Tensor], WeightSpace]:
    """``(label, state_dict, space)`` for a module, a state_dict or a checkpoint path/URI."""
    label, sd, space, _ = load_network(source, arch, example_input=example_input, allow_code=allow_code)
    return label, sd, space


def load_network(source: Source, arch: Any = None, *, example_input: Any = None, allow_code: bool = True,
                 predictor: Any = None) -> tuple[str, dict[str, torch.Tensor], WeightSpace, nn.Module | None]:
    """:func:`load_source` plus the network as a module holding those weights (None for a bare state_dict
    without ``arch``): predictors with probe features run it.

    A module without ``example_input`` or ``wsl_input_shape`` is traced at the training input shape of
    ``predictor`` (default: of each shipped predictor in turn), then at that shape flattened (an MLP on
    flattened images), and only then at a shape guessed from its first layer."""
    from wsl.io import check_finite, load_model, resolve_arch

    if isinstance(source, nn.Module):
        label, module, sd = type(source).__name__, source, dict(source.state_dict())
    elif isinstance(source, Mapping):
        label, sd = "<state_dict>", dict(source)
        if arch is None:
            space = _space_for_state_dict(sd)
            if space is None:
                raise PredictionError("a bare state_dict needs an architecture (arch=...) unless it matches "
                                      "a shipped predictor's architecture")
            module = None
        else:
            module = resolve_arch(arch, allow_code=allow_code)
            try:
                module.load_state_dict(sd, strict=True)
            except Exception as exc:
                raise PredictionError(f"{label}: the weights do not load into the given architecture: {exc}") from exc
            module.eval()
    elif isinstance(source, (str, os.PathLike)):
        from wsl.io import local_path

        label = str(source)
        module, sd = load_model(local_path(label), arch, allow_code=allow_code)
    else:
        raise PredictionError(f"cannot predict from a {type(source).__name__}; pass a module, state_dict or path")
    bad = check_finite(sd)
    if bad:
        raise PredictionError(f"{label}: non-finite weights (NaN/Inf) in {', '.join(bad[:5])}"
                              + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
    if module is not None:
        space = _trace(module, example_input, predictor)
    space.check(sd, where=label)
    return label, sd, space, module


def predict_network(p: Predictor, space: WeightSpace, sd: Mapping[str, torch.Tensor],
                    module: nn.Module | None) -> float:
    """The raw prediction of ``p`` for one network (its probe features from ``module`` when ``p`` reads them)."""
    probes = None
    if p.probes is not None:
        if module is None:
            raise PredictionError(f"predictor {_name(p)!r} also reads the network's outputs on probe inputs, so it "
                                  "needs the architecture, not a bare state_dict: pass the module, a checkpoint "
                                  "with its architecture, or arch=...")
        shape = p.probes.get("input_shape")
        try:
            probes = p.probe_features(module, shape)
        except WslError as exc:
            raise PredictionError(f"cannot run the network on the predictor's probe inputs of shape {shape} "
                                  f"(its training family's input): {exc}") from exc
    renamed = tensor_renaming(p, space)
    if renamed:  # the predictor's training architecture under other tensor names: read it as that
        space, sd = p.space, {renamed.get(k, k): v for k, v in sd.items()}
    return float(p.predict(space, {k: v.unsqueeze(0) for k, v in sd.items()}, probes=probes)[0])


def tensor_renaming(p: Predictor, space: WeightSpace) -> dict[str, str] | None:
    """``{network's tensor name: predictor's}`` when ``p`` reads ``space`` only as its training architecture under
    other tensor names (same order, shapes and symmetry groups); None when ``p`` reads it as is or not at all."""
    if p.accepts(space) or p.space is None:
        return None
    return match_tensors(space, p.space) or None


def choose_predictor(space: WeightSpace, predictor: Any = None) -> tuple[Predictor, list[str]]:
    """The predictor to use and its warnings; raises PredictionError with every reason if none fits."""
    if predictor is not None:
        p = get_predictor(predictor)
        errors, warnings = _fit(p, space)
        if errors:
            raise PredictionError(f"predictor {_name(p)!r} cannot read this network: {'; '.join(errors)}")
        return p, warnings
    candidates = [(name, path) for name, path, _ in shipped()]
    if not candidates:
        raise PredictionError("no predictor given and no shipped predictor found (set WSL_MODELS_DIR or pass "
                              "--predictor DIR)")
    _, p, warnings = closest_predictor(space, candidates, "shipped")
    return p, warnings


def closest_predictor(space: WeightSpace, candidates: Iterable[tuple[str, Any]],
                      what: str = "loaded") -> tuple[str, Predictor, list[str]]:
    """Among ``(name, predictor or reference)`` candidates, the one whose training family is closest.

    Closest: fewest out-of-distribution warnings, ties broken by candidate order
    (shipped priority). Used by :func:`choose_predictor` and ``wsl serve``, so
    both pick the same predictor for the same network. Raises
    PredictionError listing every candidate's reason if none can read it.
    """
    reasons = []
    best: tuple[int, int, str, Predictor, list[str]] | None = None
    for rank, (name, ref) in enumerate(candidates):
        p = get_predictor(ref)
        errors, warnings = _fit(p, space)
        if errors:
            reasons.append(f"{name}: {'; '.join(errors)}")
        elif best is None or (len(warnings), rank) < best[:2]:
            best = (len(warnings), rank, name, p, warnings)
    if best is None:
        raise PredictionError(f"no {what} predictor covers this architecture -- " + " | ".join(reasons))
    return best[2], best[3], best[4]


def _fit(p: Predictor, space: WeightSpace) -> tuple[list[str], list[str]]:
    if not p.accepts(space) and tensor_renaming(p, space) is None:
        return [f"it reads only its training architecture (the networks of zoo "
                f"{p.config['training'].get('zoo_name')!r}: same tensors in the same order with the same shapes "
                "and symmetry groups; names may differ)"], []
    return check_family(space, p.config.get("family"))


def _architecture(space: WeightSpace) -> dict[str, Any]:
    nodes, edges = space.graph_size()
    return {"num_parameters": space.num_parameters, "num_tensors": len(space.tensors), "num_nodes": nodes,
            "num_edges": edges, "signature": space.signature,
            "activations": list(space.meta("activations", ()))}


def make_prediction(label: str, p: Predictor, space: WeightSpace, raw: float, warnings: list[str]) -> Prediction:
    """The :class:`Prediction` of predictor output ``raw``: clipped to [0, 1] for accuracies, with its interval."""
    if not math.isfinite(raw):
        raise PredictionError(f"{label}: the predictor produced a non-finite value")
    cal = p.config.get("calibration") or {}
    bounded = p.target.endswith("accuracy")
    value = float(np.clip(raw, 0.0, 1.0)) if bounded else float(raw)
    interval = None
    if "abs_residual" in cal:
        interval = clipped_interval(raw, float(cal["abs_residual"]), bounded)
    coverage = (cal.get("coverage") or {}).get("test", cal.get("test_coverage"))
    return Prediction(source=label, predicted_test_accuracy=value, predictor=_name(p), interval=interval,
                      interval_level=cal.get("level"), architecture=_architecture(space), warnings=list(warnings),
                      target=p.target, raw_prediction=float(raw), interval_coverage=coverage,
                      renamed_tensors=tensor_renaming(p, space))


def clipped_interval(raw: float, half_width: float, bounded: bool) -> tuple[float, float]:
    """``raw ± half_width``; for an accuracy both ends are clipped into [0, 1], so ``lo <= hi`` always holds."""
    lo, hi = raw - half_width, raw + half_width
    if bounded:
        lo, hi = min(max(lo, 0.0), 1.0), min(max(hi, 0.0), 1.0)
    return float(lo), float(hi)


def predict(source: Source, predictor: Any = None, *, arch: Any = None, example_input: Any = None,
            allow_code: bool = True) -> Prediction:
    """Predict the test accuracy of one network from its weights.

    ``source`` is an ``nn.Module``, a state_dict (with ``arch``, or matching a
    shipped predictor's architecture -- only for predictors without probe
    features, which must run the network) or a checkpoint path / ``hf://`` URI.
    ``predictor`` is a predictor directory, ``hf://`` URI, shipped name or
    loaded predictor; by default the shipped predictor that can read the network
    with the fewest out-of-distribution warnings (ties: shipped priority,
    ``digits-cnn-gs`` first; :func:`closest_predictor`). Raises
    :class:`~wsl.errors.PredictionError` when no number can honestly be given
    (unsupported family, non-finite weights).
    """
    label, sd, space, module = load_network(source, arch, example_input=example_input, allow_code=allow_code,
                                            predictor=predictor)
    p, warnings = choose_predictor(space, predictor)
    raw = predict_network(p, space, sd, module)
    return make_prediction(label, p, space, raw, warnings)


def predict_many(sources: Sequence[Source], predictor: Any = None, **kw: Any) -> list[Prediction | WslError]:
    """:func:`predict` for several sources; a failure is returned in place, not raised."""
    out: list[Prediction | WslError] = []
    for s in sources:
        try:
            out.append(predict(s, predictor, **kw))
        except WslError as e:
            out.append(e)
    return out

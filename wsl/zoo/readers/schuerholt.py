"""Reader for the model zoos of Schuerholt et al. (2022, "Model Zoos: A Dataset of Diverse
Populations of Neural Network Models"; github.com/ModelZoos/ModelZooDataset).

A zoo is a Ray Tune experiment directory::

    ROOT/config.json                     the generating tune config (optional)
    ROOT/NN_tune_trainable_<id>_<k>_<params>/
        params.json                      the trial's config: model::type, model::channels_in,
                                         model::nlin, model::dropout, model::init_type,
                                         optim::lr, optim::wd, seed, ...
        result.json                      one JSON object per line (training_iteration,
                                         train_acc, test_acc, train_loss, test_loss, ...)
        checkpoint_<N>/checkpoints       torch.save(model.state_dict()), N = training_iteration
                                         (written as checkpoint_1 or checkpoint_000001)

The networks (``CNN``, ``CNN2``, ``CNN3``, ``MLP`` in ``def_net.py``) keep their layers
in an ``nn.ModuleList`` called ``module_list``: conv -> [maxpool 2x2] -> nonlinearity ->
[dropout] ... -> flatten -> linear -> nonlinearity -> [dropout] -> linear. Dropout
layers exist only for some configurations (``dropout > 0``, or always in ``CNN3``), so
module indices shift; the published loader's fixed indices then break. Here the layer
order comes from the state_dict keys: the index gap between two parameterised layers
says how many parameter-free layers lie between them, and which ones follows from the
layer kinds (a flatten before the first linear), the dropout rate and, for an
ambiguous single extra layer after a convolution, ``model::dropout`` (dropout if > 0,
else max pooling). The input size is the type's documented size (28 for CNN/CNN2, 32 for
CNN3) when it fits the first linear layer, else the smallest size that does. Keys lose
their ``module_list.`` prefix (the converted model is a plain ``nn.Sequential``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from wsl.errors import CheckpointError, ZooFormatError
from wsl.zoo.readers import STANDARD_METRICS, Batch, Chunk, Source, as_metric

FORMAT = "schuerholt"
NONLINEARITIES = {"leakyrelu": "leaky_relu", "leaky_relu": "leaky_relu", "relu": "relu", "tanh": "tanh",
                  "sigmoid": "sigmoid", "silu": "silu", "gelu": "gelu"}
DEFAULT_SIZES = {"CNN": 28, "CNN2": 28, "CNN3": 32}
RAY_KEYS = {"training_iteration", "timestamp", "time_this_iter_s", "time_total_s", "pid",
            "time_since_restore", "timesteps_since_restore", "iterations_since_restore", "timesteps_total",
            "episodes_total", "done", "warmup_time", "num_healthy_workers", "should_checkpoint"}
DATASETS = ("tiny-imagenet", "cifar100", "cifar10", "fashion", "f_mnist", "mnist", "svhn", "stl", "usps")
_CKPT_DIR = re.compile(r"^checkpoint_(\d+)$")
_KEY = re.compile(r"^(?P<prefix>(?:.+\.)?)(?P<idx>\d+)\.(?P<what>weight|bias)$")


def _trial_dirs(src: Path) -> list[Path]:
    """Trial directories (holding params.json) of ``src`` or of its subdirectories."""
    def trials(d: Path) -> list[Path]:
        return [t for t in sorted(d.iterdir()) if t.is_dir() and (t / "params.json").is_file()]

    found = trials(src)
    if not found:
        for sub in sorted(p for p in src.iterdir() if p.is_dir()):
            found += trials(sub)
    if not found:
        raise ZooFormatError(f"{src}: no Ray Tune trial directories (subdirectories holding params.json) found")
    return found


def _read_json(path: Path) -> dict[str, Any]:
    from wsl.io import read_json_object

    return read_json_object(path, what=path.name, error=ZooFormatError)


def _results(path: Path) -> dict[int, dict[str, Any]]:
    """result.json lines by training_iteration (empty if the file is missing)."""
    if not path.is_file():
        return {}
    out: dict[int, dict[str, Any]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ZooFormatError(f"{path}: cannot read: {exc}") from exc
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ZooFormatError(f"{path} line {n}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        it = obj.get("training_iteration") if isinstance(obj, dict) else None
        if not isinstance(it, int) or isinstance(it, bool):
            raise ZooFormatError(f"{path} line {n}: expected an object with an integer 'training_iteration'")
        out[it] = obj
    return out


def _checkpoints(trial: Path) -> list[tuple[int, Path]]:
    """(N, path of checkpoint_N/checkpoints) sorted by N."""
    out = []
    for d in trial.iterdir():
        m = _CKPT_DIR.match(d.name)
        if m and d.is_dir():
            f = d / "checkpoints"
            if not f.is_file():
                raise ZooFormatError(f"{d}: checkpoint directory without a 'checkpoints' file")
            out.append((int(m.group(1)), f))
    out.sort()
    dupes = [n for (n, _), (m, _) in zip(out, out[1:]) if n == m]
    if dupes:
        raise ZooFormatError(f"{trial}: checkpoint {dupes[0]} exists twice (checkpoint_{dupes[0]} and zero-padded)")
    return out


def _scalar_items(params: dict[str, Any]) -> dict[str, Any]:
    """JSON scalars (and lists of scalars) of a config: the trial's hyperparameters."""
    def ok(v: Any) -> bool:
        return v is None or isinstance(v, (str, int, float, bool))

    return {k: v for k, v in params.items() if ok(v) or (isinstance(v, list) and all(ok(x) for x in v))}


def _layers(sd: dict[str, torch.Tensor], where: str) -> tuple[str, dict[int, tuple[int, ...]], set[int]]:
    """(key prefix, {module index: weight shape}, indices with bias) of a module_list state_dict."""
    prefix: str | None = None
    weights: dict[int, tuple[int, ...]] = {}
    biases: dict[int, tuple[int, ...]] = {}
    for key, t in sd.items():
        m = _KEY.match(key)
        if not m:
            raise ZooFormatError(f"{where}: unsupported state_dict entry {key!r} (expected '<prefix>.<i>.weight' "
                                 "or '.bias' of Conv2d/Linear layers in a module list)")
        if prefix is None:
            prefix = m.group("prefix")
        elif m.group("prefix") != prefix:
            raise ZooFormatError(f"{where}: entry {key!r} does not share the prefix {prefix!r} of the others")
        (weights if m.group("what") == "weight" else biases)[int(m.group("idx"))] = tuple(t.shape)
    if not weights:
        raise ZooFormatError(f"{where}: empty state_dict")
    for i, shape in weights.items():
        if len(shape) not in (2, 4):
            raise ZooFormatError(f"{where}: {prefix}{i}.weight has shape {list(shape)}; only Conv2d (4-d) and "
                                 "Linear (2-d) layers are supported")
        if i in biases and biases[i] != shape[:1]:
            raise ZooFormatError(f"{where}: {prefix}{i}.bias has shape {list(biases[i])}, expected [{shape[0]}]")
    stray = sorted(set(biases) - set(weights))
    if stray:
        raise ZooFormatError(f"{where}: {prefix}{stray[0]}.bias has no weight")
    return prefix or "", weights, set(biases)


def infer_architecture(sd: dict[str, torch.Tensor], params: dict[str, Any], where: str,
                       input_size: int | None = None) -> tuple[dict[str, Any], str]:
    """The ``wsl.arch/1`` description of a module_list checkpoint, and the key prefix to drop."""
    prefix, weights, has_bias = _layers(sd, where)
    nlin = params.get("model::nlin")
    act = NONLINEARITIES.get(str(nlin).lower()) if nlin is not None else None
    if act is None:
        raise ZooFormatError(f"{where}: params.json field 'model::nlin' is {nlin!r}; supported: "
                             f"{', '.join(NONLINEARITIES)}")
    try:
        p = float(params.get("model::dropout") or 0.0)
    except (TypeError, ValueError):
        raise ZooFormatError(f"{where}: params.json field 'model::dropout' is not a number") from None
    order = sorted(weights)
    if order[0] != 0:
        raise ZooFormatError(f"{where}: the first parameterised layer is {prefix}{order[0]}, expected index 0")
    specs: list[dict[str, Any]] = []
    convs: list[tuple[int, bool]] = []  # (kernel, pooled) per conv, for the input size search
    for a, b in zip(order, [*order[1:], None]):
        shape = weights[a]
        if len(shape) == 4:
            if shape[2] != shape[3]:
                raise ZooFormatError(f"{where}: {prefix}{a}.weight has a non-square kernel {list(shape[2:])}")
            specs.append({"type": "conv2d", "out_channels": shape[0], "kernel_size": shape[2],
                          "bias": a in has_bias})
        else:
            specs.append({"type": "linear", "out_features": shape[0], "bias": a in has_bias})
        if b is None:
            break
        gap, nxt = b - a - 1, weights[b]
        if len(shape) == 2 and len(nxt) == 4:
            raise ZooFormatError(f"{where}: {prefix}{b} is a convolution after the linear layer {prefix}{a}")
        flatten = len(shape) == 4 and len(nxt) == 2
        rest = gap - 1 - int(flatten)  # minus the nonlinearity (and flatten)
        if rest < 0 or rest > (2 if len(shape) == 4 else 1):
            raise ZooFormatError(f"{where}: {gap} parameter-free modules between {prefix}{a} and {prefix}{b} "
                                 "do not fit the published layer patterns")
        pool = len(shape) == 4 and (rest == 2 or (rest == 1 and p <= 0))
        drop = rest - int(pool) == 1
        if len(shape) == 4:
            convs.append((shape[2], pool))
        specs += [{"type": "maxpool2d", "kernel_size": 2, "stride": 2}] if pool else []
        specs.append({"type": act})
        specs += [{"type": "dropout", "p": min(max(p, 0.0), 1.0)}] if drop else []
        specs += [{"type": "flatten"}] if flatten else []
    first = weights[order[0]]
    if len(first) == 2:
        input_shape = [first[1]]
    else:
        lin = next((weights[i] for i in order if len(weights[i]) == 2), None)
        last_c = [weights[i] for i in order if len(weights[i]) == 4][-1][0]
        size = _input_size(convs, last_c, lin[1] if lin else None, params, input_size, where)
        input_shape = [first[1], size, size]
    desc = {"format": "wsl.arch/1", "kind": "sequential", "input_shape": input_shape, "layers": specs}
    _check(desc, sd, prefix, where)
    return desc, prefix


def _input_size(convs: list[tuple[int, bool]], channels: int, flat: int | None, params: dict[str, Any],
                forced: int | None, where: str) -> int:
    """Square input size whose flattened conv output has ``flat`` features."""
    def flat_size(n: int) -> int:
        for k, pool in convs:
            n = n - k + 1
            n = n // 2 if pool else n
            if n < 1:
                return -1
        return channels * n * n

    default = DEFAULT_SIZES.get(str(params.get("model::type")))
    if forced is not None:
        candidates = [forced]
    else:
        candidates = ([default] if default else []) + list(range(1, 513))
    for n in candidates:
        if flat is None or flat_size(n) == flat:
            return n
    raise ZooFormatError(f"{where}: no input size {'of ' + str(forced) + ' ' if forced else ''}makes the "
                         f"convolutions' output ({channels} channels) flatten to {flat} features")


def _check(desc: dict[str, Any], sd: dict[str, torch.Tensor], prefix: str, where: str) -> None:
    """Build ``desc`` on the meta device and compare its state_dict with the checkpoint's."""
    from wsl.archs.describe import build
    from wsl.errors import ArchitectureError

    try:
        with torch.device("meta"):
            module = build(desc)
    except ArchitectureError as exc:
        raise ZooFormatError(f"{where}: inferred architecture is invalid: {exc}") from exc
    want = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k[len(prefix):]: tuple(v.shape) for k, v in sd.items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:4]
        raise ZooFormatError(f"{where}: inferred architecture does not reproduce the checkpoint (differences: {diff})")


def _metrics(result: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """Row metrics from one result.json line (-999 placeholders become null)."""
    out: dict[str, Any] = {m: None for m in STANDARD_METRICS}
    for key, value in (result or {}).items():
        if key in RAY_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        name = key[:-4] + "_accuracy" if key.endswith("_acc") else key
        v = as_metric(value, f"{where}: field {key!r}")
        out[name] = None if v == -999 else v
    return out


def _loader(trial: Path, params: dict[str, Any], ckpts: list[tuple[int, Path]], results: dict[int, dict[str, Any]],
            src: Path, input_size: int | None, device: str,
            cache: dict[Any, tuple[dict[str, Any], str]]) -> Callable[[], Batch]:
    """A closure loading one trial's checkpoints into a Batch."""

    def load() -> Batch:
        from wsl.io import load_state_dict

        sds = []
        for _, path in ckpts:
            try:
                sds.append(load_state_dict(path, device=device))
            except CheckpointError as exc:
                raise ZooFormatError(str(exc)) from exc
        first = sds[0]
        sig = (tuple((k, tuple(v.shape)) for k, v in first.items()), str(params.get("model::nlin")),
               float(params.get("model::dropout") or 0) > 0, str(params.get("model::type")), input_size)
        if sig not in cache:
            cache[sig] = infer_architecture(first, params, str(ckpts[0][1]), input_size)
        desc, prefix = cache[sig]
        names = list(first)
        for (_, path), sd in zip(ckpts[1:], sds[1:]):
            if list(sd) != names or any(sd[k].shape != first[k].shape for k in names):
                bad = next((k for k in names if k not in sd or sd[k].shape != first[k].shape),
                           next(iter(set(sd) - set(names)), "?"))
                raise ZooFormatError(f"{path}: entry {bad!r} differs from {ckpts[0][1]} (names/shapes must agree "
                                     "across a trial's checkpoints)")
        stacked = {k[len(prefix):]: torch.stack([sd[k] for sd in sds]).float() for k in names}
        seed = params.get("seed")
        hparams = _scalar_items(params)
        rows = []
        for (n, path), _ in zip(ckpts, sds):
            row = {"model_id": trial.name, "epoch": n, "seed": seed if isinstance(seed, int) else None,
                   "hparams": hparams, **_metrics(results.get(n), f"{trial / 'result.json'} iteration {n}"),
                   "source": path.relative_to(src).as_posix()}
            rows.append(row)
        return Batch(desc, stacked, rows)

    return load


def _dataset_name(src: Path, params: dict[str, Any]) -> str | None:
    text = " ".join([src.name, *(str(v) for k, v in params.items() if "dataset" in k or "data_path" in k)])
    low = text.lower()
    found = next((d for d in DATASETS if d in low), None)
    return {"f_mnist": "fashion_mnist", "fashion": "fashion_mnist"}.get(found or "", found)


def open_source(src: Path, *, limit: int | None = None, input_size: int | None = None,
                device: str = "cpu") -> Source:
    """Validate a Ray Tune experiment directory and plan one chunk per trial."""
    trials = _trial_dirs(src)
    if limit is not None:
        from wsl.zoo.readers import select_models

        keep = select_models([t.name for t in trials], limit) or set()
        trials = [t for t in trials if t.name in keep]
    chunks: list[Chunk] = []
    notes: list[str] = []
    cache: dict[Any, tuple[dict[str, Any], str]] = {}
    first_params: dict[str, Any] | None = None
    no_ckpt = no_results = 0
    for trial in trials:
        params = _read_json(trial / "params.json")
        first_params = first_params or params
        ckpts = _checkpoints(trial)
        if not ckpts:
            no_ckpt += 1
            continue
        results = _results(trial / "result.json")
        no_results += not results
        chunks.append(Chunk(f"{FORMAT}:{trial.name}", len(ckpts),
                            _loader(trial, params, ckpts, results, src, input_size, device, cache)))
    if no_ckpt:
        notes.append(f"skipped {no_ckpt} trial(s) without checkpoint_<N> directories")
    if no_results:
        notes.append(f"{no_results} trial(s) have no result.json: their metrics are null")
    params = first_params or {}
    config = _read_json(src / "config.json") if (src / "config.json").is_file() else {}
    ch, mtype = params.get("model::channels_in"), str(params.get("model::type"))
    size = input_size or DEFAULT_SIZES.get(mtype)
    dataset = {"name": _dataset_name(src, params),
               "input_shape": [ch, size, size] if isinstance(ch, int) and size else None}
    recipe = {"source": "Model Zoos (Schuerholt et al. 2022), Ray Tune trials", "model_type": mtype,
              "tune_config": _scalar_items(config)}
    return Source(FORMAT, src, f"modelzoo-{src.name}", dataset, recipe,
                  "Converted from a Ray Tune model zoo (params.json/result.json/checkpoint_<N>).",
                  chunks, len(chunks), notes)

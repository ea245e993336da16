"""Hub cards (``README.md`` with YAML front matter) for predictors and zoos.

:func:`predictor_card` writes a model card from a predictor's ``config.json``
(training zoo and recipe, Kendall tau / R^2 / MAE per split, intended inputs
and limits, usage); :func:`zoo_card` a dataset card from a zoo (counts,
splits, architectures, recipe, metric distributions, how to load it with
``wsl``). Both carry the tags ``weight-space-learning`` and ``wsl`` and a
``license`` field in the front matter the Hub reads.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import yaml

__all__ = ["DEFAULT_LICENSE", "TAGS", "front_matter", "hyper_card", "predictor_card", "split_front_matter", "zoo_card"]

TAGS = ("weight-space-learning", "wsl")
DEFAULT_LICENSE = "apache-2.0"
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"))


def front_matter(meta: Mapping[str, Any]) -> str:
    """``---\\n<yaml>---\\n`` (keys in the given order; None values dropped)."""
    clean = {k: v for k, v in meta.items() if v is not None and v != []}
    return "---\n" + yaml.safe_dump(clean, sort_keys=False, allow_unicode=True, default_flow_style=False) + "---\n"


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """(metadata, body) of a card; ``({}, text)`` if it has no front matter."""
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 4)
    if end < 0:
        return {}, text
    meta = yaml.safe_load(text[4:end]) or {}
    body = text[end + 4:]
    return (meta if isinstance(meta, dict) else {}), body[1:] if body.startswith("\n") else body


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _fmt(v: Any, spec: str = ".3f") -> str:
    x = _num(v)
    return "n/a" if x is None else format(x, spec)


def _dataset_id(zoo: Any) -> str | None:
    """``ORG/NAME`` of an ``hf://datasets/ORG/NAME...`` zoo reference, else None."""
    if isinstance(zoo, str) and zoo.startswith("hf://datasets/"):
        parts = zoo[len("hf://datasets/"):].split("/")
        if len(parts) >= 2:
            return f"{parts[0]}/{parts[1].split('@')[0]}"
    return None


def _yaml_block(obj: Any, limit: int = 60) -> str:
    lines = yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, default_flow_style=False).splitlines()
    if len(lines) > limit:
        lines = lines[:limit] + [f"# ... ({len(lines) - limit} more lines)"]
    return "```yaml\n" + "\n".join(lines) + "\n```\n"


def predictor_card(config: Mapping[str, Any], repo_id: str | None = None, *, license: str = DEFAULT_LICENSE,
                   zoo_card: Mapping[str, Any] | None = None) -> str:
    """The model card of a predictor directory from its ``config.json`` (see :mod:`wsl.train.registry`).

    ``zoo_card``: the training zoo's ``zoo.json``, when available, for its recipe.
    """
    model, inp, target = config.get("model", {}), config.get("input", {}), config.get("target", {})
    tr, metrics = config.get("training", {}) or {}, config.get("metrics", {}) or {}
    name = repo_id.split("/")[-1] if repo_id else f"wsl-{model.get('name', 'predictor')}"
    tname = str(target.get("name", "the target"))
    zoo_ref, ds = tr.get("zoo"), _dataset_id(tr.get("zoo"))
    meta: dict[str, Any] = {"license": license, "library_name": "wsl",
                            "tags": [*TAGS, "generalization-prediction", "meta-model", str(model.get("name", ""))],
                            "datasets": [ds] if ds else None}
    rows, results = [], []
    for split in ("val", "test"):
        m = metrics.get(split)
        if not isinstance(m, Mapping):
            continue
        rows.append(f"| {split} | {_fmt(m.get('tau'))} | {_fmt(m.get('r2'))} | {_fmt(m.get('mae'), '.4f')} | "
                    f"{m.get('n', 'n/a')} |")
        if split == "test":
            found = [(k, t, _num(m.get(k))) for k, t in (("tau", "Kendall tau"), ("r2", "R^2"), ("mae", "MAE"))]
            results = [{"type": {"tau": "kendall_tau", "r2": "r_squared", "mae": "mae"}[k], "value": v, "name": t}
                       for k, t, v in found if v is not None]
    if results:
        zname = str(tr.get("zoo_name") or "zoo")
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "generalization-prediction", "name": f"Predict {tname} from weights"},
            "dataset": {"type": ds or zname, "name": f"{zname} (test split)"}, "metrics": results}]}]
    acc = inp.get("accepts", {}) or {}
    if acc.get("type") == "any":
        reads = "any architecture `wsl` can trace (parameter-graph or bucketed-statistics input)"
    else:
        sigs = ", ".join(f"`{s}`" for s in acc.get("signatures", [])) or "n/a"
        reads = f"only networks whose `WeightSpace.signature` is one of {sigs} (the training architecture)"
    archs = "\n".join(f"  - `{a}`: signature `{v.get('signature')}`, {v.get('num_parameters', 0):,} parameters"
                      for a, v in (tr.get("architectures") or {}).items()) or "  - n/a"
    recipe = ""
    if zoo_card:
        recipe = ("\nRecipe of the training zoo (`zoo.json` field `recipe`; dataset "
                  f"`{(zoo_card.get('dataset') or {}).get('name', 'n/a')}`):\n\n" + _yaml_block(zoo_card.get("recipe")))
    zoo_line = f"[`{ds}`](/datasets/{ds})" if ds else f"`{zoo_ref}`"
    uri = f"hf://{repo_id}" if repo_id else "hf://ORG/NAME"
    n_params = metrics.get("num_parameters")
    body = f"""# {name}

A `wsl` weight-space meta-model: it predicts **{tname}** of a trained
neural network from its weights alone, without running it on data (probe predictors run it
on fixed synthetic inputs only).

## Training zoo and recipe

- Zoo: `{tr.get('zoo_name', 'n/a')}` ({zoo_line}), {tr.get('num_train', 'n/a')} training rows, checkpoints
  `{tr.get('checkpoints', 'n/a')}`.
- Architectures seen in training:
{archs}
- Meta-model: `{model.get('name')}` ({inp.get('kind')} input){f', {n_params:,} parameters' if isinstance(n_params, int) else ''},
  arguments `{json.dumps(model.get('params', {}), sort_keys=True)}`; best epoch {metrics.get('best_epoch', 'n/a')}.
- Target normalization: `{tname} = {_fmt(target.get('mean'), '.6g')} + {_fmt(target.get('std'), '.6g')} * output`.
{recipe}
## Metrics

| split | Kendall tau | R^2 | MAE | n |
|---|---|---|---|---|
{chr(10).join(rows) if rows else '| n/a | | | | |'}

## Intended inputs and limits

- Reads {reads}.
- Trained on one zoo: networks from other data sets, sizes or training recipes are out of
  distribution; treat predictions there as a ranking at best and check on held-out models.
- Predicts a number from weights; it is not a substitute for evaluating a model on its task.

## Usage

```bash
pip install wsl
wsl predict MODEL_CHECKPOINT --predictor {uri}
```

```python
from wsl.hub import HubPredictor
predictor = HubPredictor.from_pretrained("{uri}")
predictor.predict_zoo(zoo)          # or predictor.predict(space, stacked_state_dicts)
```
"""
    return front_matter(meta) + "\n" + body


def _size_category(n: int) -> str:
    return next((label for bound, label in _SIZES if n < bound), "n>10M")


def zoo_card(zoo: Any, repo_id: str | None = None, *, license: str | None = None, folder: str = "") -> str:
    """The dataset card of a zoo (a :class:`wsl.zoo.Zoo`), for a dataset repository ``repo_id``."""
    from wsl.zoo.summary import summarize

    info, card = summarize(zoo), zoo.card
    extra, dataset = card.get("extra") or {}, card.get("dataset") or {}
    lic = license or extra.get("license") or dataset.get("license") or DEFAULT_LICENSE
    prefix = f"{folder}/" if folder else ""
    meta = {"license": str(lic), "pretty_name": str(card["name"]), "tags": [*TAGS, "model-zoo"],
            "size_categories": [_size_category(int(card["num_rows"]))],
            "configs": [{"config_name": "metadata", "data_files": f"{prefix}metadata.jsonl"}]}
    uri = f"hf://datasets/{repo_id}" + (f"/{folder}" if folder else "") if repo_id else "hf://datasets/ORG/NAME"
    splits = "\n".join(f"| {k} | {v['rows']:,} | {v['models']:,} | {v['fraction']} |"
                       for k, v in info["splits"].items())
    archs = "\n".join(f"| `{a['id']}` | {a['kind']} | {a['num_parameters']:,} | {a['rows']:,} | {a['models']:,} | "
                      f"{a['shards']:,} |" for a in info["architectures"])
    mrows = "\n".join(f"| {k} | {m['count']:,} | " + " | ".join(_fmt(m.get(q), ".4g") for q in
                                                               ("min", "q25", "median", "q75", "max", "mean")) + " |"
                      for k, m in info["metrics"].items() if m.get("count"))
    size = info["disk_bytes"]
    size_text = f"{size / 1e6:,.1f} MB" if size >= 1e5 else f"{size / 1e3:,.1f} kB"
    description = f"{card['description']}\n\n" if card.get("description") else ""
    body = f"""# {card['name']} (version {card['version']})

{description}A model zoo in the native `wsl` format `{card['format']}`: {info['num_rows']:,} checkpoints
(rows) of {info['num_models']:,} trained networks in {info['num_shards']:,} safetensors shard(s) ({size_text}),
dataset `{dataset.get('name', 'n/a')}`.

## Splits (by model: all checkpoints of a network share its split)

| split | rows | models | fraction |
|---|---|---|---|
{splits}

## Architectures

| id | kind | parameters | rows | models | shards |
|---|---|---|---|---|---|
{archs}

## Metrics (distribution over rows)

| metric | count | min | q25 | median | q75 | max | mean |
|---|---|---|---|---|---|---|---|
{mrows or '| n/a | | | | | | | |'}

## Recipe

{_yaml_block(card.get('recipe'))}
Dataset (`zoo.json` field `dataset`):

{_yaml_block(dataset, limit=20)}
## Files

- `{prefix}zoo.json`: the card (architectures as `wsl.arch/1` descriptions, shard list with SHA-256, splits).
- `{prefix}metadata.jsonl`: one JSON row per checkpoint (`model_id`, `arch`, `epoch`, `split`, `hparams`,
  `train_accuracy`, `test_accuracy`, `train_loss`, `test_loss`, ...).
- `{prefix}shards/*.safetensors`: each architecture's tensors stacked over rows (`(num_rows, *shape)`).

## Load with wsl

```bash
pip install wsl
wsl zoo info {uri}
```

```python
import wsl
zoo = wsl.load_zoo("{uri}")     # reads zoo.json + metadata.jsonl; shards download when first read
train = zoo.split("train").latest()
weights = train.stacked()          # {{tensor name: (N, *shape)}}
accuracy = train.column("test_accuracy")
```
"""
    return front_matter(meta) + "\n" + body


def hyper_card(config: Mapping[str, Any], metrics: Mapping[str, Any], hyper_config: Mapping[str, Any],
               repo_id: str | None = None, *, license: str = DEFAULT_LICENSE) -> str:
    """The model card of a NeuMeta run directory (``config.json``, ``metrics.json``, the hypernetwork's config)."""
    arch = hyper_config.get("arch", {}) or {}
    family = str(arch.get("name", "network"))
    ds = str(config.get("dataset", "data"))
    name = repo_id.split("/")[-1] if repo_id else f"wsl-neumeta-{family}"
    acc = metrics.get("accuracy", {}) or {}
    widths = metrics.get("widths", {}) or {}
    results = [{"type": "accuracy", "value": _num(a), "name": f"test accuracy at width ratio {r}"}
               for r, a in sorted(acc.items(), key=lambda kv: float(kv[0])) if _num(a) is not None]
    meta: dict[str, Any] = {"license": license, "library_name": "wsl",
                            "tags": [*TAGS, "hypernetwork", "neumeta", family]}
    if results:
        meta["model-index"] = [{"name": name, "results": [{
            "task": {"type": "image-classification", "name": f"{family} on {ds} generated at any width"},
            "dataset": {"type": ds, "name": f"{ds} (test split)"}, "metrics": results}]}]
    rows = "\n".join(f"| {r} | {widths.get(r, 'n/a')} | {_fmt(a, '.4f')} |"
                     for r, a in sorted(acc.items(), key=lambda kv: float(kv[0])))
    tv = ""
    if _num(metrics.get("tv_before")) is not None:
        tv = (f" Units were reordered along shortest paths before the fit (total variation "
              f"{_fmt(metrics.get('tv_before'), '.1f')} -> {_fmt(metrics.get('tv_after'), '.1f')}).")
    uri = f"hf://{repo_id}" if repo_id else "RUN"
    body = (f"# {name}\n\nA NeuMeta hypernetwork (`wsl.hyper`): one implicit network from weight coordinates to "
            f"weight values that generates the whole `{family}` (architecture `{json.dumps(arch, sort_keys=True)}`) "
            f"at any width ratio, trained on `{ds}` from a base network of test accuracy "
            f"{_fmt(metrics.get('base_accuracy'), '.4f')}.{tv}\n\n"
            f"| width ratio | widths | test accuracy |\n|---|---|---|\n{rows}\n\n"
            f"Hypernetwork: {metrics.get('hyper_bytes', 'n/a')} bytes; the networks at the evaluated widths: "
            f"{metrics.get('family_bytes', 'n/a')} bytes.\n\n"
            f"## Use\n\n```bash\nwsl hyper sample {uri} --width 0.5 -o net.safetensors\n```\n\n"
            f"```python\nfrom wsl.hyper.run import load_hyper\nnet = load_hyper(\"{uri}\").sample(0.5)\n```\n\n"
            f"## Limits\n\nAccuracy is measured on the data set's test split, one deterministic sample per width "
            f"(coordinate centres). Widths outside the trained range (`train.min_ratio` = "
            f"{(config.get('train') or {}).get('min_ratio', 'n/a')} to 1) are extrapolation. Networks with "
            f"BatchNorm get their running statistics recomputed on the first training inputs of `{ds}`.\n")
    return front_matter(meta) + body

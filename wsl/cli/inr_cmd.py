"""``wsl render`` and ``wsl edit``: look at implicit neural representations and edit them through their weights.

``wsl render INR [INR ...] -o image.png`` draws the render of each INR
checkpoint (one image, or a grid for many); ``wsl render --zoo ZOO --rows
0:16 -o grid.png`` draws rows of an INR zoo. The grid shape comes from
``--shape``, else from the checkpoint (``wsl edit`` records it), else from the zoo.

``wsl edit INR --edit dilate --model RUN -o edited.safetensors`` applies an
editing run's meta-model (``wsl train`` with ``task: inr_editing``) to one INR
and writes the edited INR with its architecture (``wsl render`` reads it back).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from wsl.errors import WslError


def register(sub: Any) -> None:
    r = sub.add_parser("render", help="render INRs (implicit neural representations) to a PNG image or grid",
                       description="Evaluate INRs on their sample grid and draw the images (signals as curves).")
    r.add_argument("inrs", nargs="*", metavar="INR", help="INR checkpoints (.safetensors written by wsl carry "
                   "their architecture)")
    r.add_argument("-o", "--output", required=True, help="PNG file to write")
    r.add_argument("--zoo", help="render rows of this INR zoo instead (directory or hf://datasets/...)")
    r.add_argument("--rows", default="0:16", help="with --zoo: rows as a,b,c or start:stop (default 0:16)")
    r.add_argument("--split", help="with --zoo: count rows within this split (train/val/test)")
    r.add_argument("--shape", metavar="HxW", help="grid shape (e.g. 16x16 or 40); default: recorded in the "
                   "checkpoint or the zoo")
    r.add_argument("--arch", metavar="REF", help="architecture of checkpoints that do not carry one")
    r.add_argument("--cols", type=int, help="columns of the grid (default: about square)")
    r.set_defaults(func=run_render)
    e = sub.add_parser("edit", help="edit an INR through its weights with a trained editing meta-model",
                       description="Apply the meta-model of a `wsl train` run with task inr_editing to an INR: "
                       "W' = W + dW(W); write the edited INR with its architecture.")
    e.add_argument("inr", metavar="INR", help="INR checkpoint (.safetensors with its architecture), or ZOO:ROW")
    e.add_argument("--edit", required=True, help="the edit (dilate, erode, contrast, gaussian_blur); must be the "
                   "one the model was trained for")
    e.add_argument("--model", required=True, metavar="RUN", help="run directory of `wsl train` (task inr_editing), "
                   "or its inr_model/ directory")
    e.add_argument("-o", "--output", required=True, help="edited INR (.safetensors)")
    e.add_argument("--arch", metavar="REF", help="architecture of a checkpoint that does not carry one")
    e.add_argument("--png", metavar="FILE", help="also draw before / after renders to this PNG")
    e.add_argument("--json", action="store_true", help="print a JSON summary")
    e.set_defaults(func=run_edit)


def _rows(text: str, n: int) -> list[int]:
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            rows = list(range(int(a or 0), min(n, int(b) if b else n)))
        else:
            rows = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise WslError(f"--rows {text!r}: expected a,b,c or start:stop") from None
    bad = [r for r in rows if not 0 <= r < n]
    if not rows or bad:
        raise WslError(f"--rows {text!r}: rows must lie in [0, {n}) and not be empty")
    return rows


def _shape_arg(text: str | None) -> tuple[int, ...] | None:
    from wsl.cli.common import parse_shape

    try:
        return parse_shape(text)
    except WslError:
        raise WslError(f"--shape {text!r}: expected sizes like 16x16 or 40") from None


def recorded_shape(path: str) -> tuple[int, ...] | None:
    """The grid shape recorded in an INR checkpoint's ``wsl_inr`` metadata (None when absent)."""
    from wsl.io import read_checkpoint_metadata

    raw = read_checkpoint_metadata(path).get("wsl_inr")
    if raw is None:
        return None
    try:
        shape = json.loads(raw)["shape"]
        return tuple(int(s) for s in shape)
    except (ValueError, KeyError, TypeError):
        raise WslError(f"{path}: metadata 'wsl_inr' is not valid JSON with a 'shape' list") from None


def load_inr(ref: str, arch: str | None) -> tuple[Any, tuple[int, ...] | None, str]:
    """``(module, recorded shape or None, label)`` of a checkpoint path or ``ZOO:ROW``."""
    from pathlib import Path

    from wsl.io import load_model, local_path

    if ":" in ref and not Path(ref).exists() and "://" not in ref:
        root, _, row = ref.rpartition(":")
        if row.isdigit() and Path(root).is_dir():
            from wsl.tasks.inr import zoo_shape
            from wsl.zoo import load_zoo

            zoo = load_zoo(root)
            if int(row) >= len(zoo):
                raise WslError(f"{ref}: row {row} is out of range (the zoo has {len(zoo)} rows)")
            return zoo[int(row)].module(), zoo_shape(zoo), f"{Path(root).name}[{row}]"
    path = local_path(ref)
    module, _ = load_model(path, arch)
    return module, recorded_shape(str(path)), Path(ref).name


def run_render(args: argparse.Namespace) -> int:
    import torch

    from wsl.tasks.inr import render
    from wsl.tasks.inr_plots import render_grid

    torch.set_num_threads(1)
    if not str(args.output).lower().endswith(".png"):
        raise WslError(f"-o {args.output}: wsl render writes PNG files; name it *.png")
    if args.cols is not None and args.cols < 1:
        raise WslError(f"--cols: expected a positive int, got {args.cols}")
    shape = _shape_arg(args.shape)
    images, titles = [], []
    if args.zoo:
        if args.inrs:
            raise WslError("give INR checkpoints or --zoo, not both")
        from wsl.io import local_path
        from wsl.tasks.inr import zoo_shape
        from wsl.zoo import load_zoo

        zoo = load_zoo(local_path(args.zoo, repo_type="dataset"))
        view = zoo.split(args.split) if args.split else zoo
        shape = shape or zoo_shape(zoo)
        for r in _rows(args.rows, len(view)):
            m = view[r]
            images.append(render(m.module(), shape))
            meta = m.metadata
            titles.append(f"{meta.get('label', '')} ({meta['model_id']})")
    else:
        if not args.inrs:
            raise WslError("give INR checkpoints to render, or --zoo ZOO")
        for ref in args.inrs:
            module, recorded, label = load_inr(ref, args.arch)
            s = shape or recorded
            if s is None:
                raise WslError(f"{ref}: the grid shape is not recorded in the checkpoint; pass --shape (e.g. 16x16)")
            images.append(render(module, s))
            titles.append(label)
    if len({tuple(im.shape) for im in images}) > 1:
        raise WslError(f"the INRs render to different shapes {sorted({tuple(im.shape) for im in images})}; "
                       "render them separately")
    stack = torch.stack(images)
    out = render_grid(stack, args.output, titles=titles if len(images) > 1 else None, cols=args.cols)
    if out is None:
        raise WslError("wsl render needs matplotlib (pip install 'wsl[plot]')")
    print(f"wrote {out}: {len(images)} render(s) of shape {tuple(stack.shape[1:])}")
    return 0


def run_edit(args: argparse.Namespace) -> int:
    import time

    import torch

    from wsl.io import save_module
    from wsl.tasks.inr import render
    from wsl.train.inr_editor import load_inr_model

    torch.set_num_threads(1)
    if not str(args.output).lower().endswith(".safetensors"):
        raise WslError(f"-o {args.output}: the edited INR is written as safetensors with its architecture; "
                       "name it *.safetensors")
    editor = load_inr_model(args.model)
    if editor.task != "inr_editing":
        raise WslError(f"--model {args.model}: trained for {editor.task}, not inr_editing")
    if args.edit != editor.edit_name:
        raise WslError(f"--edit {args.edit}: model {args.model} was trained for {editor.edit_name!r}; train one for "
                       f"{args.edit!r} with inr.edit={args.edit}")
    module, recorded, label = load_inr(args.inr, args.arch)
    t0 = time.perf_counter()
    edited = editor.edit_module(module)
    ms = (time.perf_counter() - t0) * 1000
    shape = editor.shape
    if recorded is not None and tuple(recorded) != tuple(shape):
        raise WslError(f"{args.inr}: recorded grid {recorded} differs from the model's {shape}")
    meta = {"wsl_inr": json.dumps({"shape": list(shape), "edit": args.edit, "model": str(args.model),
                                   "source": str(args.inr)})}
    out = save_module(edited, args.output, metadata=meta)
    summary = {"input": str(args.inr), "output": str(out), "edit": args.edit, "model": str(args.model),
               "shape": list(shape), "edit_ms": ms}
    if args.png:
        from wsl.tasks.inr_edits import apply_edit
        from wsl.tasks.inr_plots import edit_grid

        before = render(module, shape)
        edit_grid({"INR": before.unsqueeze(0), "edited INR": render(edited, shape).unsqueeze(0),
                   f"target ({args.edit})": apply_edit(args.edit, before.unsqueeze(0))}, args.png, row_labels=[label])
        summary["png"] = str(args.png)
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {out}: {label} edited ({args.edit}) by {args.model} in {ms:.1f} ms")
    return 0


def inr_baseline_names(task: str) -> tuple[str, ...]:
    """The baselines ``wsl train`` runs without the Trainer for an INR task."""
    from wsl.tasks.inr_baselines import INR_BASELINES

    return INR_BASELINES.get(task, ())


def run_inr_baseline(cfg: Any) -> int:
    """``wsl train`` of an INR baseline config: run it, write ``metrics.json``, print the result."""
    import time
    from pathlib import Path

    from wsl.io import atomic_open, local_path
    from wsl.tasks.inr_baselines import run_inr_baseline as run
    from wsl.tasks.metrics import to_json
    from wsl.zoo import load_zoo

    dc = cfg.data
    t0 = time.perf_counter()
    zoo = load_zoo(local_path(dc.zoo, repo_type="dataset"), verify=dc.verify)
    res = run(cfg.task, cfg.model.name, zoo, dict(cfg.model.params), seed=cfg.train.seed, edit=cfg.inr.edit,
              checkpoints=dc.checkpoints, splits=(dc.train_split, dc.val_split, dc.test_split), arch=dc.arch,
              max_train=dc.max_train)
    res.update(wall_time_s=time.perf_counter() - t0, model=cfg.model.name, config=cfg.to_dict())
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "metrics.json", "w", encoding="utf-8") as fh:
        json.dump(to_json(res), fh, indent=1)
    return print_inr_result(cfg, res)


def print_inr_result(cfg: Any, m: dict[str, Any]) -> int:
    """One line: the test metric of an INR run."""
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    key = "accuracy" if cfg.task == "inr_classification" else "mse"
    rate = m.get("models_per_s")
    extra = f", no edit {m['test']['identity_mse']:.5f}" if key == "mse" else ""
    print(f"{cfg.model.name} ({cfg.task}{', ' + cfg.inr.edit if key == 'mse' else ''}): val {key} "
          f"{m['val'][key]:.4f}, test {key} {m['test'][key]:.4f}{extra}"
          + (f", {rate:.0f} models/s" if rate else "") + f", {m['wall_time_s']:.0f}s -> {cfg.output}")
    return 0

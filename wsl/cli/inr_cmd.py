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
                   "or its editor/ directory")
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
    from wsl.train.inr_editor import edit_command

    return edit_command(args)

"""Opening what a subspace analysis reads: a zoo, or checkpoints of one architecture.

:func:`open_source` turns a command-line source into a :class:`Source`: the
trained stack, the stack the ``init`` null uses (or why there is none), and
what is known about the architecture (to build modules, trace the weight
space for alignment, evaluate accuracy).

* **A zoo** (a folder with ``zoo.json``, or ``hf://`` resolving to one): the
  rows of one architecture (``arch=``, required when the zoo has several),
  optionally one split, at the last checkpoint of each model
  (``epochs="latest"``), at one epoch, or every row (``"all"``). Without
  ``arch=``, architectures that share one tensor layout (e.g. differing only
  in their activation) are pooled; different layouts must be chosen from. Its ``init``
  null is the zoo's epoch-0 rows of the same models, written by the
  generator with the recipe's own initialisation; a zoo without epoch-0 rows
  falls back to the architecture's default initialisation (N seeds).
* **LoRA adapters** (folders with ``adapter_config.json``, or a folder of
  them): the update ``dW = s B A`` per target, see
  :func:`wsl.subspace.adapters.adapter_source`.
* **Checkpoints**: paths or URIs of safetensors / ``.pt`` files, or one
  folder holding them. Safetensors files are read block by block (memory
  mapped); others are loaded. The ``init`` null needs ``arch=`` (any
  architecture reference ``wsl`` accepts); without it the null is skipped
  with that reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsl.errors import WslError, ZooFormatError
from wsl.io import load_state_dict, local_path, resolve_arch
from wsl.subspace.stacks import FileStack, Stack, TensorStack

__all__ = ["Source", "init_stack", "open_source"]

_CKPT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@dataclass
class Source:
    """A stack plus what is known about it (see the module docstring)."""

    label: str
    stack: Stack
    init: Stack | None = None
    init_reason: str = ""
    build: Callable[[], nn.Module] | None = None
    zoo: Any = None
    rows: Any = None
    dataset: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def space(self) -> Any:
        """The architecture's WeightSpace (for alignment), or None when no architecture is known."""
        if self.zoo is not None and self.rows is not None and len(self.rows):
            return self.rows[0].space
        if self.build is None:
            return None
        from wsl.space import WeightSpace

        return WeightSpace.from_module(self.build())


def init_stack(build: Callable[[], nn.Module], n: int, names: Sequence[str], seed: int = 0) -> TensorStack:
    """``n`` networks from ``build()`` under seeds ``seed .. seed+n-1`` (default initialisation), as a stack.

    The global RNG is saved and restored, so calling this changes nothing else.
    """
    state = torch.random.get_rng_state()
    try:
        sds = []
        for i in range(n):
            torch.manual_seed(seed + i)
            sd = build().state_dict()
            sds.append({k: sd[k].detach().to(torch.float32) for k in names})
    finally:
        torch.random.set_rng_state(state)
    return TensorStack.from_state_dicts(sds, [f"init-{seed + i}" for i in range(n)])


def _is_zoo(path: Path) -> bool:
    return path.is_dir() and (path / "zoo.json").is_file()


def _open_zoo(path: Path, label: str, *, split: str | None, epochs: str | int, arch: str | None,
              limit: int | None) -> Source:
    from wsl.zoo import load_zoo

    zoo = load_zoo(path)
    archs = sorted(zoo.architectures)
    if arch is None:
        layouts = {aid: list(zoo.store.tensors(aid).items()) for aid in archs}
        if any(layouts[aid] != layouts[archs[0]] for aid in archs[1:]):
            raise ZooFormatError(f"{label}: the zoo has {len(archs)} architectures {archs} with different tensor "
                                 "shapes; choose one with arch= (--zoo-arch on the command line)")
        view = zoo  # one tensor layout (e.g. architectures that differ only in activation): pooled
        arch = archs[0]
    elif arch not in archs:
        raise ZooFormatError(f"{label}: no architecture {arch!r}; the zoo has {archs}")
    else:
        view = zoo.filter(arch=arch)
        archs = [arch]
    if split is not None:
        view = view.split(split)
    trained = view.latest() if epochs == "latest" else view if epochs == "all" else view.filter(epoch=int(epochs))
    if limit is not None:
        trained = trained[:int(limit)]
    if not len(trained):
        raise ZooFormatError(f"{label}: no rows selected (arch {arch}, split {split}, epochs {epochs})")
    ids = [f"{r['model_id']}@{r['epoch']}" for r in trained.iter_metadata()]
    stack = TensorStack(trained.stacked(), ids)
    wanted = set(trained.column("model_id").tolist())
    init_rows = view.filter(lambda r: r["epoch"] == 0 and r["model_id"] in wanted)
    info = {"kind": "zoo", "arch": arch, "archs": archs, "split": split, "epochs": epochs, "zoo": zoo.name}
    src = Source(label, stack, zoo=zoo, rows=trained, dataset=str(zoo.card["dataset"].get("name") or "") or None,
                 build=lambda: zoo.store.build(arch), info=info)
    if len(init_rows):
        src.init = TensorStack(init_rows.stacked(), [f"{r['model_id']}@0" for r in init_rows.iter_metadata()])
        src.info["init"] = "the zoo's epoch-0 rows (the recipe's initialisation)"
    else:
        src.init = init_stack(src.build, len(stack), stack.names)  # type: ignore[arg-type]
        src.info["init"] = "the architecture's default initialisation (the zoo has no epoch-0 rows)"
    return src


def _checkpoint_paths(items: Sequence[str | os.PathLike[str]]) -> list[Path]:
    paths: list[Path] = []
    for item in items:
        p = Path(local_path(item))
        if p.is_dir() and not _is_zoo(p):
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in _CKPT_SUFFIXES)
            if not found:
                raise WslError(f"{item}: no checkpoints ({', '.join(_CKPT_SUFFIXES)}) in this folder")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise WslError(f"{item}: no such file, folder or zoo")
    return paths


def open_source(sources: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, arch: Any = None,
                split: str | None = None, epochs: str | int = "latest", limit: int | None = None,
                init_seed: int = 0) -> Source:
    """Open a zoo or a set of checkpoints (see the module docstring)."""
    items = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    if not items:
        raise WslError("no source given: a zoo folder, a checkpoint folder, or checkpoint files")
    first = Path(local_path(items[0]))
    if len(items) == 1 and _is_zoo(first):
        return _open_zoo(first, str(items[0]), split=split, epochs=epochs,
                         arch=arch if isinstance(arch, str) or arch is None else None, limit=limit)
    if any(_is_zoo(Path(local_path(i))) for i in items):
        raise WslError("give one zoo, or checkpoints; not a mix of both")
    from wsl.subspace.adapters import adapter_source, is_adapter_source

    if is_adapter_source(items):  # PEFT LoRA adapter folders: the dW stack (see wsl.subspace.adapters)
        return Source(**adapter_source(items, limit=limit, init_seed=init_seed))
    paths = _checkpoint_paths(items)
    if limit is not None:
        paths = paths[:int(limit)]
    if len(paths) < 2:
        raise WslError(f"a subspace analysis needs at least 2 checkpoints, got {len(paths)}")
    if all(p.suffix.lower() == ".safetensors" for p in paths):
        stack: Stack = FileStack(paths)
    else:
        stack = TensorStack.from_state_dicts([load_state_dict(p) for p in paths], [p.stem for p in paths])
    label = str(items[0]) if len(items) == 1 else f"{len(paths)} checkpoints"
    src = Source(label, stack, info={"kind": "checkpoints", "n_files": len(paths)})
    if arch is not None:
        src.build = lambda: resolve_arch(arch)
        src.init = init_stack(src.build, len(stack), stack.names, seed=init_seed)
        src.info["init"] = "the architecture's default initialisation, one seed per model"
    else:
        src.init_reason = "no architecture given (arch=, --arch): the init null needs one"
    return src

"""INR task data: the rows of one split of an INR zoo, ready for a meta-model, with labels or edit targets.

Rows come from :func:`wsl.tasks.generalization.select_rows` (``checkpoints``
``"last"``: the final fit of every INR). Every split must hold whole images:
an image whose INRs fall in two splits raises :class:`~wsl.tasks.inr.INRError`
(:func:`check_disjoint_images`), so a held-out INR's class is never its
image's memorised identity.

Normalisation: learned models read ``W_t / r_t`` where ``r_t`` is the
root-mean-square of tensor ``t`` over the *training* split (one scalar per
tensor: it commutes with permutations and sign flips). An editing model's
output ``U`` is mapped back to a weight update by ``dW_t = r_t U_t``.

Inputs per model kind (:attr:`INRSplit.kind`): ``features``
(:class:`~wsl.graph.WeightSpaceFeatures`), ``graph`` (parameter graphs),
``stats`` (StatNN features of the raw weights), ``render`` (the renders
``(n, *shape)``: the probing reference, which sees the function rather than the weights).
Un-augmented batches slice inputs built once; augmented ones apply
random sign flips (``augment.sign_flip``, :mod:`wsl.tasks.inr_symmetry`),
random permutations (``augment.permute``) and relative Gaussian noise
(``augment.noise``) to the raw weights, then normalise and rebuild.

Targets: ``labels`` (the image's class) for classification; for editing
``targets = edit(render(W))`` (:mod:`wsl.tasks.inr_edits`) and the renders
``before = render(W)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from wsl.tasks.inr import INRError, Renderer, check_inr_zoo, zoo_shape

__all__ = ["INR_KINDS", "INRSplit", "check_disjoint_images", "prepare_inr_split", "tensor_scales"]

INR_KINDS = ("features", "graph", "stats", "render")


def tensor_scales(stacked: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Root-mean-square of every floating tensor over all models and entries (1.0 for an all-zero tensor)."""
    out = {}
    for k, t in stacked.items():
        if t.is_floating_point():
            r = float(t.double().square().mean().sqrt())
            out[k] = r if r > 0 else 1.0
    return out


def _scaled(stacked: Mapping[str, torch.Tensor], scales: Mapping[str, float]) -> dict[str, torch.Tensor]:
    return {k: (t / scales[k] if k in scales else t) for k, t in stacked.items()}


@dataclass
class INRSplit:
    """One split of an INR zoo (see the module docstring); ``len()`` = number of INRs."""

    name: str
    kind: str
    rows: np.ndarray  #: global zoo row ids
    space: Any
    description: dict[str, Any]
    shape: tuple[int, ...]
    raw: dict[str, torch.Tensor]  #: raw weights (n, ...) on the data device
    scales: dict[str, float]  #: per-tensor normalisation r_t (training split)
    labels: torch.Tensor  #: (n,) long
    images: np.ndarray  #: (n,) image index of every INR
    y: torch.Tensor  #: the trainer's target vector (labels as float; the image index for editing)
    before: torch.Tensor | None = None  #: renders (n, *shape) (editing and render inputs)
    targets: torch.Tensor | None = None  #: editing targets (n, *shape)
    sign_groups: list[int] | None = None
    cache: Any = None
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def renderer(self) -> Renderer:
        """The batched renderer of this split's architecture."""
        if "_renderer" not in self.info:
            self.info["_renderer"] = Renderer(self.description, self.shape)
        return self.info["_renderer"]  # type: ignore[no-any-return]

    def augmented_raw(self, idx: torch.Tensor, augment: Any, generator: torch.Generator | None) -> dict[str, Any]:
        """Raw weights of positions ``idx`` after sign flips, permutations and noise (as configured)."""
        dev = self.labels.device
        sd = {k: t[idx.to(dev)] for k, t in self.raw.items()}
        if augment is None:
            return sd
        n = int(idx.numel())
        if getattr(augment, "sign_flip", False):
            from wsl.tasks.inr_symmetry import flip_signs, random_signs

            if self.sign_groups is None:
                raise INRError(f"split {self.name}: sign flips were not set up (augment.sign_flip needs them)")
            sd = flip_signs(self.space, sd, random_signs(self.space, self.sign_groups, generator, n))
        if augment.permute or augment.noise > 0:
            from wsl.tasks.generalization import augment_stacked

            sd = augment_stacked(self.space, sd, augment, generator)
        return sd

    def _build(self, sd: Mapping[str, torch.Tensor], idx: torch.Tensor | None) -> Any:
        """Model input of the (raw) weights ``sd``; ``idx`` slices the prebuilt cache instead when given."""
        if self.kind == "render":
            return self.before[idx.to(self.before.device)] if idx is not None else self.renderer(sd).detach()
        if idx is not None:
            if self.kind == "graph":
                return self.cache.take(idx)
            if self.kind == "stats":
                return self.cache[idx.to(self.cache.device)]
            from wsl.graph import WeightSpaceFeatures

            sel = idx.to(self.labels.device)
            return WeightSpaceFeatures(self.space, {k: t[sel] for k, t in self.cache.blocks.items()},
                                       {k: t[sel] for k, t in self.cache.extras.items()})
        if self.kind == "stats":
            from wsl.tasks.statnn import statnn_features

            return statnn_features(self.space, sd, "per_tensor").to(torch.float32)
        norm = _scaled(sd, self.scales)
        if self.kind == "graph":
            from wsl.graph import build

            return build(self.space, norm)
        from wsl.graph import WeightSpaceFeatures

        return WeightSpaceFeatures.from_state_dicts(self.space, norm)

    def batch(self, idx: torch.Tensor, augment: Any = None,
              generator: torch.Generator | None = None) -> tuple[Any, torch.Tensor, dict[str, torch.Tensor]]:
        """``(model input, positions, raw weights the input encodes)`` for split positions ``idx``."""
        idx = idx.to(torch.long).cpu()
        aug = augment is not None and (augment.permute or augment.noise > 0 or getattr(augment, "sign_flip", False))
        sd = self.augmented_raw(idx, augment if aug else None, generator)
        if self.kind == "render" and aug and augment.noise <= 0:
            aug = False  # sign flips and permutations leave the function, hence the render, unchanged
        return self._build(sd, None if aug else idx), idx, sd

    def inputs(self, idx: torch.Tensor, augment: Any = None,
               generator: torch.Generator | None = None) -> tuple[Any, torch.Tensor]:
        """``(model input, positions)``: the interface of :class:`wsl.tasks.generalization.SplitData`."""
        x, order, _ = self.batch(idx, augment, generator)
        return x, order


def check_disjoint_images(splits: Mapping[str, INRSplit]) -> None:
    """Raise :class:`INRError` if an image has INRs in two of the splits."""
    seen: dict[int, str] = {}
    for name, sp in splits.items():
        for img in np.unique(sp.images).tolist():
            other = seen.setdefault(int(img), name)
            if other != name:
                raise INRError(f"image {img} has INRs in splits {other!r} and {name!r}: an INR task needs splits by "
                               "image (regenerate the zoo with `wsl zoo generate`, which splits by image)")


@torch.no_grad()
def _render_all(renderer: Renderer, raw: Mapping[str, torch.Tensor], chunk: int = 512) -> torch.Tensor:
    n = int(next(iter(raw.values())).shape[0])
    parts = [renderer({k: t[lo:lo + chunk] for k, t in raw.items()}) for lo in range(0, n, chunk)]
    return torch.cat(parts).float()


def prepare_inr_split(zoo: Any, role: str, split: str, kind: str, *, task: str = "classification",
                      edit: str | None = None, checkpoints: str = "last", max_rows: int | None = None,
                      seed: int = 0, device: torch.device | str | None = None,
                      scales: Mapping[str, float] | None = None, normalize: bool = True,
                      sign_flip: bool = False, arch: str | None = None) -> INRSplit:
    """Select the rows of ``split`` and build ``kind`` inputs and the task's targets once.

    ``scales`` (per-tensor normalisation) default to this split's own RMS
    (pass the training split's for val/test), or to 1 without ``normalize``.
    ``task`` is ``"classification"`` or ``"editing"`` (then ``edit`` names the edit).
    """
    from wsl.tasks.generalization import select_rows

    if kind not in INR_KINDS:
        raise INRError(f"INR tasks read {', '.join(INR_KINDS)} inputs, got {kind!r}")
    if task not in ("classification", "editing"):
        raise INRError(f"unknown INR task {task!r}; valid: classification, editing")
    view = select_rows(zoo, split, checkpoints, "label", arch, max_rows, seed)
    if len(view) == 0:
        raise INRError(f"{zoo.root}: split {split!r} has no INR rows" + (f" of arch {arch!r}" if arch else ""))
    check_inr_zoo(view, f"{zoo.root}")
    archs = list(dict.fromkeys(view.column("arch").tolist()))
    if len(archs) > 1:
        raise INRError(f"{zoo.root}: split {split!r} mixes architectures {archs}; INR tasks read one (set data.arch)")
    space = view[0].space
    description = zoo.architectures[archs[0]]["arch"]
    shape = zoo_shape(zoo)
    raw = view.stacked(device=device)
    labels = torch.as_tensor(view.column("label"), dtype=torch.long, device=device)
    images = np.asarray(view.column("image"), dtype=np.int64)
    if scales is not None:
        sc = dict(scales)
    else:
        sc = tensor_scales(raw) if normalize else {k: 1.0 for k in tensor_scales(raw)}
    sp = INRSplit(role, kind, view.row_ids, space, description, shape, raw, sc, labels, images,
                  labels.float() if task == "classification" else torch.as_tensor(images, dtype=torch.float32,
                                                                                    device=device))
    sp.info.update(num_rows=len(view), num_models=len(view.model_ids()), num_images=int(np.unique(images).size),
                   arch=archs[0])
    if sign_flip:
        from wsl.tasks.inr_symmetry import sign_groups

        sp.sign_groups = sign_groups(space, description)
    if kind == "render" or task == "editing":
        sp.before = _render_all(sp.renderer, raw)
    if task == "editing":
        from wsl.tasks.inr_edits import apply_edit

        if edit is None:
            raise INRError("the editing task needs an edit (inr.edit)")
        sp.targets = apply_edit(edit, sp.before)
    if kind == "graph":
        from wsl.graph import build
        from wsl.tasks.generalization import GraphCache

        sp.cache = GraphCache(build(space, _scaled(raw, sc)), len(sp))
    elif kind == "features":
        from wsl.graph import WeightSpaceFeatures

        sp.cache = WeightSpaceFeatures.from_state_dicts(space, _scaled(raw, sc))
    elif kind == "stats":
        sp.cache = sp._build(raw, None)
    return sp


def split_summary(splits: Mapping[str, INRSplit]) -> str:
    """``train 960 INRs (480 images), ...`` for logs."""
    return ", ".join(f"{r} {len(s)} INRs ({s.info['num_images']} images)" for r, s in splits.items())


def positions(n: int, chunk: int) -> Sequence[torch.Tensor]:
    """Consecutive position chunks of ``range(n)``."""
    return [torch.arange(lo, min(n, lo + chunk)) for lo in range(0, n, chunk)]

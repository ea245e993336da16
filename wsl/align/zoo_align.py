"""Zoo canonicalization: write a copy of a zoo in which every model is aligned to one reference.

Per architecture of the zoo, the *last* checkpoint of every model is aligned
(weight matching) to a reference -- one row of the zoo, or the barycentre of
all last checkpoints (align everything to the mean, average again, until no
permutation changes) -- and that one permutation is applied to *every*
checkpoint of the model, so a model's training trajectory stays one curve
in weight space. Metadata, model ids and splits are kept; the function of
every network is unchanged. The output is written in chunks with resume
tokens: run the same call again after an interruption and finished chunks
are kept.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from wsl.errors import ZooFormatError
from wsl.zoo import load_zoo
from wsl.zoo.format import WRITER_FIELDS
from wsl.zoo.writer import ZooWriter

from wsl.align.merge import Barycentre
from wsl.align.weight_matching import weight_matching

CHUNK_ROWS = 256


def align_zoo(src: str | os.PathLike[str], out: str | os.PathLike[str], *, reference: str | int = "mean",
              max_iterations: int = 5, progress: bool = True) -> Any:
    """Write ``src`` aligned to ``reference`` (``"mean"`` or a row number) at ``out``; returns the new zoo."""
    from tqdm.auto import tqdm

    zoo = load_zoo(src)
    card = zoo.card
    ref_row = None
    if reference != "mean":
        try:
            ref_row = zoo[int(reference)]
        except (ValueError, IndexError) as e:
            raise ZooFormatError(f"{src}: reference must be 'mean' or a row number of the zoo ({e})") from None
    extra = dict(card.get("extra") or {})
    extra["aligned"] = {"reference": reference if ref_row is None else int(ref_row.row), "method": "weight_matching",
                        "source": card["name"]}
    writer = ZooWriter(out, name=card["name"], dataset=card["dataset"], recipe=card["recipe"], splits=card["splits"],
                       version=card["version"], description=card["description"], extra=extra)
    done = writer.completed_chunks()
    try:
        for arch_id in sorted(zoo.architectures):
            part = zoo.filter(arch=arch_id)
            latest = part.latest()
            if not len(latest):
                continue
            space = latest[0].space
            if ref_row is not None and ref_row.arch_id != arch_id:
                ref: Any = "mean"  # the reference row speaks only for its own architecture
            else:
                ref = ref_row.state_dict() if ref_row is not None else "mean"
            new_arch = writer.add_architecture(latest[0].arch)
            chunks = [(arch_id, k) for k in range(0, len(part), CHUNK_ROWS)]
            if all(f"{a}:{k}" in done for a, k in chunks):
                continue
            target = ref if ref != "mean" else Barycentre(max_iterations, start="mean").merge(
                [m.state_dict() for m in latest], space=space)
            bar = tqdm(latest, desc=f"aligning {arch_id}", unit="model", disable=not progress, leave=False)
            perm_of = {m.model_id: weight_matching(target, m.state_dict(), space).perms for m in bar}
            for a, k in chunks:
                token = f"{a}:{k}"
                if token in done:
                    continue
                rows = part[k:k + CHUNK_ROWS]
                stacked = rows.stacked()
                meta = [m.metadata for m in rows]
                perms = {g: torch.stack([perm_of[r["model_id"]][g] for r in meta]) for g in perm_of[meta[0]["model_id"]]}
                moved = space.permute(stacked, perms, batched=True)
                writer.append(new_arch, moved, [{k2: v for k2, v in r.items() if k2 not in WRITER_FIELDS}
                                                for r in meta], chunk=token)
    finally:
        writer.close()
    return load_zoo(Path(out))

"""Join zoos (e.g. the parts written by ``wsl zoo generate --shard i/n``) into one.

:func:`merge_zoos` checks that the inputs describe the same zoo (name,
dataset, recipe and split rule agree), renumbers rows, maps architectures by
their description (keeping each input's ids where they do not clash), and
hard-links (or copies) shard files unchanged when possible; a shard is
rewritten only if its architecture id changes or some of its rows are dropped.
A model_id present in several inputs is an error unless its rows are identical
(then the later copy is dropped). Rows of compressed inputs
(:mod:`wsl.zoo.compressed`) are reconstructed and written as native shards,
so merging one compressed zoo alone decompresses it. The output is assembled in a temp directory
and renamed into place at the end, so a failed merge leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wsl.errors import ZooFormatError
from wsl.zoo.format import FORMAT, METADATA_FILE, SHARD_DIR, WRITER_FIELDS, shard_file
from wsl.zoo.store import file_sha256, row_line, write_card
from wsl.zoo.zoo import Zoo, load_zoo

__all__ = ["merge_zoos"]

AGREE = ("name", "dataset", "recipe", "splits")


def _content(row: dict[str, Any], arch: dict[str, Any]) -> dict[str, Any]:
    """A row without its location fields, with the architecture description instead of its id."""
    out = {k: v for k, v in row.items() if k not in WRITER_FIELDS}
    out["arch"] = arch
    return out


def _place(src: Path, dst: Path, link: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)


def merge_zoos(out: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str] | Zoo], *,
               link: bool = True, verify: bool = True) -> Zoo:
    """Merge ``inputs`` (paths or opened zoos) into a new zoo at ``out``; returns it opened.

    ``link`` hard-links unchanged shards (falling back to a copy across
    filesystems); ``verify`` checksums every input shard first.
    """
    from tqdm.auto import tqdm

    from wsl.io import atomic_save_safetensors

    if len(inputs) < 1:
        raise ZooFormatError("merge: give at least one input zoo")
    target = Path(out)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ZooFormatError(f"{target}: merge output exists and is not an empty directory")
    zoos = [z if isinstance(z, Zoo) else load_zoo(z, verify="none") for z in inputs]
    roots = [str(z.root) for z in zoos]
    if len(set(os.path.realpath(r) for r in roots)) != len(roots):
        raise ZooFormatError(f"merge: an input zoo is given twice ({roots})")
    first = zoos[0].card
    for z, r in zip(zoos[1:], roots[1:]):
        card = z.card
        for field in AGREE:
            if card[field] != first[field]:
                raise ZooFormatError(f"merge: {r}/zoo.json field '{field}' differs from {roots[0]}/zoo.json; "
                                     "only parts of the same zoo can be merged")
    if verify:
        for z in zoos:
            z.verify()

    archs: dict[str, Any] = {}
    plan: list[tuple[Zoo, str, int, str, list[int]]] = []  # (zoo, root, shard, new arch id, kept rows)
    owner: dict[str, tuple[int, list[dict[str, Any]]]] = {}
    for zi, z in enumerate(zoos):
        card = z.card
        remap: dict[str, str] = {}
        for aid, entry in card["architectures"].items():
            same = [a for a, e in archs.items() if e["arch"] == entry["arch"]]
            if same:
                remap[aid] = same[0]
            else:
                new = aid if aid not in archs else f"a{len(archs)}"
                while new in archs:
                    new += "_"
                archs[new] = entry
                remap[aid] = new
        rows = sorted({r["row"]: r for r in z.iter_metadata()}.values(), key=lambda r: r["row"])
        by_model: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_model.setdefault(row["model_id"], []).append(_content(row, card["architectures"][row["arch"]]["arch"]))
        drop: set[str] = set()
        for mid, contents in by_model.items():
            if mid in owner:
                if owner[mid][1] != contents:
                    raise ZooFormatError(f"merge: model_id {mid!r} is in {roots[owner[mid][0]]} and {roots[zi]} "
                                         "with different rows; model_ids must be unique across the inputs")
                drop.add(mid)
            else:
                owner[mid] = (zi, contents)
        for k, s in enumerate(card["shards"]):
            kept = [r["row"] for r in rows if r["shard"] == k and r["model_id"] not in drop]
            if kept:
                plan.append((z, roots[zi], k, remap[s["arch"]], kept))

    parent = target.parent if str(target.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.merge-", dir=parent))
    except OSError as exc:
        raise ZooFormatError(f"{target}: cannot create the output: {exc}") from exc
    try:
        (tmp / SHARD_DIR).mkdir()
        shards, lines, n = [], [], 0
        for k_new, (z, root, k, aid, kept) in enumerate(tqdm(plan, desc="merge shards", unit="shard",
                                                            disable=len(plan) < 2)):
            entry = z.store.card["shards"][k]
            rel = shard_file(aid, k_new)
            dst = tmp / rel
            if aid == entry["arch"] and len(kept) == entry["num_rows"] and z.store.card["format"] == FORMAT:
                _place(z.store.shard_path(k), dst, link)
                new_entry = dict(entry, file=rel)
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                atomic_save_safetensors(z.store.gather(np.array(kept)), dst, {"format": FORMAT, "arch": aid})
                new_entry = {"file": rel, "arch": aid, "num_rows": len(kept), "bytes": dst.stat().st_size,
                             "sha256": file_sha256(dst), "chunk": entry["chunk"]}
            shards.append(new_entry)
            for j, r in enumerate(kept):
                row = dict(z.store.rows[r])
                row.update(row=n, arch=aid, shard=k_new, index=j)
                ordered = {"row": n, "model_id": row["model_id"], "arch": aid, "shard": k_new, "index": j, **row}
                lines.append(row_line(ordered))
                n += 1
        data = b"".join(lines)
        (tmp / METADATA_FILE).write_bytes(data)
        card = zoos[0].card
        card.pop("compression", None)  # compressed inputs were reconstructed into native shards above
        card.update(format=FORMAT, architectures=archs, shards=shards, num_rows=n, num_models=len(owner),
                    metadata={"file": METADATA_FILE, "sha256": hashlib.sha256(data).hexdigest(), "num_rows": n})
        card["extra"] = dict(card["extra"], merged_from=[
            {"name": Path(r).name, "num_rows": len(z)} for z, r in zip(zoos, roots)])
        write_card(tmp, card)
        if target.exists():
            target.rmdir()
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return load_zoo(target, verify="none")

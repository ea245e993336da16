"""Predictors that ship with ``wsl`` (the top-level ``models/`` directory).

Lookup order: ``$WSL_MODELS_DIR``, then ``models/`` next to the ``wsl``
package (a source checkout or editable install). Every sub-directory holding
a ``config.json`` of format ``wsl.predictor/1`` is a predictor; its
``shipped`` block gives the public name and the priority that breaks ties
(lower first) when no predictor is named and several can read a network
with equally few out-of-distribution warnings (:func:`wsl.predict.api.closest_predictor`).
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from wsl.errors import PredictionError


def models_dir() -> Path | None:
    env = os.environ.get("WSL_MODELS_DIR")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent.parent / "models"
    return here if here.is_dir() else None


def shipped() -> list[tuple[str, Path, dict[str, Any]]]:
    """``(name, directory, config)`` of every shipped predictor, by priority."""
    return list(_scan(str(models_dir())))


@lru_cache(maxsize=4)
def _scan(root: str) -> tuple[tuple[str, Path, dict[str, Any]], ...]:
    base = Path(root)
    if root == "None" or not base.is_dir():
        return ()
    found = []
    for cfg in sorted(base.glob("*/config.json")):
        try:
            c = json.loads(cfg.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(c, dict) and c.get("format") == "wsl.predictor/1":
            info = c.get("shipped") or {}
            found.append((int(info.get("priority", 100)), str(info.get("name", cfg.parent.name)), cfg.parent, c))
    found.sort(key=lambda t: (t[0], t[1]))
    return tuple((name, path, c) for _, name, path, c in found)


def find_shipped(name: str) -> Path | None:
    for n, path, _ in shipped():
        if n == name or path.name == name:
            return path
    return None


def resolve_predictor_ref(ref: str) -> str:
    """A directory / ``hf://`` URI for ``ref`` (a path, URI or shipped name)."""
    if ref.startswith("hf://") or Path(ref).exists():
        return ref
    found = find_shipped(ref)
    if found is None:
        names = ", ".join(n for n, _, _ in shipped()) or "none installed"
        raise PredictionError(f"predictor {ref!r}: not a directory, hf:// URI or shipped name (shipped: {names})")
    return str(found)

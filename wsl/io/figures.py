"""Figures as files: matplotlib on the ``Agg`` backend (no display), optional, saved atomically.

matplotlib is the optional ``plot`` extra. :func:`pyplot` returns
``matplotlib.pyplot`` or None; callers that draw a by-product figure warn once
and carry on, since a run whose results are written must not fail for want of
a picture. :func:`save_png` writes through a temporary file and a rename, so a
reader never sees half a PNG.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from wsl.io.atomic import atomic_write

__all__ = ["pyplot", "pyplot_or_warn", "save_png"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or None when matplotlib cannot be imported."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def pyplot_or_warn(log: logging.Logger, skipped: str) -> Any:
    """:func:`pyplot`, or None after one warning on ``log`` that ``skipped`` is not drawn."""
    plt = pyplot()
    if plt is None:
        log.warning("wsl: warning: matplotlib is not installed (pip install 'wsl[plot]'); not drawing %s, "
                    "everything else is written", skipped)
    return plt


def save_png(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically; returns ``path``."""
    with atomic_write(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)

"""Typed errors raised by ``wsl``.

Every user mistake raises a subclass of :class:`WslError`. Messages say *what*
went wrong, *where* (module path, file, field, tensor name) and, where there is
one, *what to do*. The CLI prints ``str(err)`` on one line and exits non-zero.
"""

from __future__ import annotations

from collections.abc import Iterable


class WslError(Exception):
    """Base class of every error ``wsl`` raises on purpose."""


class UnsupportedLayerError(WslError):
    """A module or operation whose weight-space symmetries ``wsl`` cannot derive."""

    def __init__(self, path: str, kind: str, reason: str = "") -> None:
        self.path = path
        self.kind = kind
        self.reason = reason
        msg = f"unsupported layer at '{path or '<root>'}' ({kind})"
        if reason:
            msg += f": {reason}"
        super().__init__(msg)


class TraceError(WslError):
    """The module could not be traced into a dataflow graph."""


class ArchitectureError(WslError):
    """An architecture reference or description is invalid or cannot be built."""


class CheckpointError(WslError):
    """A checkpoint file cannot be read, or its contents are invalid."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle checkpoint would need arbitrary code to load; it was refused."""


class StateDictMismatchError(CheckpointError):
    """A state_dict does not match the architecture it is loaded against."""

    def __init__(
        self,
        missing: Iterable[str] = (),
        unexpected: Iterable[str] = (),
        mismatched: Iterable[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
        where: str = "",
    ) -> None:
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.mismatched = sorted(mismatched)
        parts = []
        if self.missing:
            parts.append(f"missing {short_list(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected {short_list(self.unexpected)}")
        if self.mismatched:
            shown = [f"{n} (expected {tuple(e)}, got {tuple(g)})" for n, e, g in self.mismatched]
            parts.append(f"wrong shape {short_list(shown)}")
        head = "state_dict does not match the architecture"
        if where:
            head += f" ({where})"
        super().__init__(head + ": " + "; ".join(parts))


class ZooFormatError(WslError):
    """A zoo on disk is malformed: corrupt shard, checksum mismatch, bad field."""


class ConfigError(WslError):
    """A configuration file or override is invalid."""


class HubError(WslError):
    """A Hugging Face Hub reference could not be resolved."""


class PredictionError(WslError):
    """A predictor cannot produce a number for this input."""


class UnknownSchemeError(WslError):
    """A path names a URI scheme (``xyz://``) that no installed part of ``wsl`` resolves."""


def short_list(items: list[str], limit: int = 8) -> str:
    """``items`` joined by commas, the first ``limit`` only and a count of the rest (for one-line messages)."""
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"


class SpaceMismatchError(WslError):
    """Two networks that must share one weight space (to align, interpolate or merge them) do not."""

"""``wsl serve``: an HTTP service (and web page) that predicts a network's test accuracy from its weights.

:func:`create_app` builds the FastAPI app (:mod:`wsl.serve.app`); uploads are
checked by :mod:`wsl.serve.validate` and bounded by :mod:`wsl.serve.limits`
(streamed size cap, admission queue with ``503`` + ``Retry-After``, worker
processes with time, CPU and memory limits). Needs the ``serve`` extra
(FastAPI, uvicorn, python-multipart); importing this package does not.

Every refusal is a :class:`ServeError` (HTTP status, machine ``code``,
message); :func:`classify` maps the library's own errors onto those.
"""

from __future__ import annotations

from typing import Any

from wsl.errors import (
    ArchitectureError, CheckpointError, HubError, PredictionError, StateDictMismatchError, TraceError,
    UnsafeCheckpointError, UnsupportedLayerError, WslError,
)

__all__ = ["ServeError", "classify", "create_app"]


class ServeError(WslError):
    """A request the service answers with an HTTP error: ``status``, machine ``code``, human ``message``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


_HUB = {"HubURIError": (422, "invalid_hub_uri"), "HubRepoNotFoundError": (404, "hub_not_found"),
        "HubRevisionNotFoundError": (404, "hub_not_found"), "HubFileNotFoundError": (404, "hub_not_found"),
        "HubAccessError": (403, "hub_forbidden"), "HubOfflineError": (503, "hub_unavailable"),
        "HubConnectionError": (502, "hub_unreachable")}


def classify(exc: WslError) -> tuple[int, str]:
    """HTTP status and error code for a library error raised on a client's input."""
    if isinstance(exc, ServeError):
        return exc.status, exc.code
    if isinstance(exc, HubError):
        for cls in type(exc).__mro__:
            if cls.__name__ in _HUB:
                return _HUB[cls.__name__]
        return 422, "hub_error"
    for cls, code in ((UnsafeCheckpointError, "unsafe_pickle"), (StateDictMismatchError, "state_dict_mismatch"),
                      (CheckpointError, "invalid_checkpoint"), (UnsupportedLayerError, "unsupported_layer"),
                      (TraceError, "untraceable_architecture"), (ArchitectureError, "invalid_architecture")):
        if isinstance(exc, cls):
            return 422, code
    if isinstance(exc, PredictionError):
        return 422, "non_finite_weights" if "non-finite weights" in str(exc) else "cannot_predict"
    return 422, "invalid_input"


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See :func:`wsl.serve.app.create_app`."""
    from wsl.serve.app import create_app as _create

    return _create(*args, **kwargs)

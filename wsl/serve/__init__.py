"""``wsl serve``: an HTTP service (and web page) that predicts a network's test accuracy from its weights.

:func:`create_app` builds the FastAPI app (:mod:`wsl.serve.app`); uploads are
checked by :mod:`wsl.serve.validate` and bounded by :mod:`wsl.serve.limits`
(streamed size cap, admission queue with ``503`` + ``Retry-After``, worker
processes with time, CPU and memory limits). Needs the ``serve`` extra
(FastAPI, uvicorn, python-multipart); importing this package does not.
"""

from __future__ import annotations

from typing import Any

from wsl.serve.limits import ServeError

__all__ = ["ServeError", "create_app"]


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See :func:`wsl.serve.app.create_app`."""
    from wsl.serve.app import create_app as _create

    return _create(*args, **kwargs)

"""wsl: weight-space learning.

Neural network weights are data. ``wsl`` turns any network's parameters into
structured, symmetry-aware views (a parameter graph, dense weight-space
features), builds and reads model zoos, and trains permutation-equivariant
meta-models on them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any

from wsl.errors import WslError

__all__ = ["WslError", "__version__", "load_zoo", "predict", "save"]


def __getattr__(name: str) -> Any:
    if name == "predict":  # ``wsl.predict(net, predictor=None)``: the callable subpackage, imported on first use
        import importlib

        return importlib.import_module("wsl.predict")
    raise AttributeError(f"module 'wsl' has no attribute {name!r}")


def load_zoo(path: Any, verify: str = "lazy") -> Any:
    """Open a model zoo (see :func:`wsl.zoo.load_zoo`); imports :mod:`wsl.zoo` on first call."""
    from wsl.zoo import load_zoo as _load_zoo

    return _load_zoo(path, verify=verify)


def save(module: Any, path: Any, **kwargs: Any) -> Any:
    """Save a network with its architecture (see :func:`wsl.io.save_module`); returns the path."""
    from wsl.io.save_module import save_module

    return save_module(module, path, **kwargs)

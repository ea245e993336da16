"""wsl: weight-space learning.

Neural network weights are data. ``wsl`` turns any network's parameters into
structured, symmetry-aware views (a parameter graph, dense weight-space
features), builds and reads model zoos, and trains permutation-equivariant
meta-models on them.

This module is the facade: importing it also imports :mod:`wsl.hub` (when
installed), which plugs the ``hf://`` scheme into :mod:`wsl.io` and lazy Hub
zoos into :mod:`wsl.zoo` -- so every function that takes a path accepts
``hf://`` URIs, whichever submodule it is imported from.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from wsl.errors import WslError
from wsl.version import __version__

__all__ = ["WeightSpace", "WslError", "__version__", "load_zoo", "predict", "save"]


def __getattr__(name: str) -> Any:
    if name == "predict":  # ``wsl.predict(net, predictor=None)``: the callable subpackage, imported on first use
        return importlib.import_module("wsl.predict")
    if name == "WeightSpace":  # ``wsl.WeightSpace.from_pretrained("hf://...")``, ``.from_module(net)``
        return importlib.import_module("wsl.space").WeightSpace
    raise AttributeError(f"module 'wsl' has no attribute {name!r}")


def load_zoo(path: Any, verify: str = "lazy") -> Any:
    """Open a model zoo (see :func:`wsl.zoo.load_zoo`); ``hf://datasets/...`` URIs are resolved."""
    from wsl.zoo import load_zoo as _load_zoo

    return _load_zoo(path, verify=verify)


def save(module: Any, path: Any, **kwargs: Any) -> Any:
    """Save a network with its architecture (see :func:`wsl.io.save_module`); returns the path."""
    from wsl.io.save_module import save_module

    return save_module(module, path, **kwargs)


# Last, so that modules imported on the way may read the names above.
if importlib.util.find_spec("wsl.hub") is not None:
    from wsl import hub  # noqa: E402,F401  (registers hf:// into wsl.io and its zoo store into wsl.zoo)

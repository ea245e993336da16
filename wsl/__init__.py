"""wsl: weight-space learning.

Neural network weights are data. ``wsl`` turns any network's parameters into
structured, symmetry-aware views (a parameter graph, dense weight-space
features), builds and reads model zoos, and trains permutation-equivariant
meta-models on them.
"""

from __future__ import annotations

__version__ = "0.1.0"

from wsl.errors import WslError

__all__ = ["WslError", "__version__"]

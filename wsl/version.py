"""The version of ``wsl``.

It lives here, not in ``wsl/__init__.py``, so that any layer may read it
without importing the facade (which imports :mod:`wsl.hub`).
"""

__version__ = "0.1.0"

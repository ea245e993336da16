"""The version of ``wsl`` (kept here, not in ``wsl/__init__.py``, so any layer may read it without importing the facade)."""

__version__ = "0.1.0"

"""Read a YAML file that must hold a mapping (configs, zoo recipes, merge files), with one-line errors."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from wsl.errors import ConfigError


def read_yaml_mapping(path: str | os.PathLike[str], *, what: str = "config", empty_ok: bool = False
                      ) -> dict[str, Any]:
    """The top-level mapping of a YAML file; a :class:`ConfigError` naming the file otherwise.

    ``empty_ok`` turns an empty file into ``{}`` instead of an error.
    """
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: the {what} is not valid UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read the {what}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: the {what} is not valid YAML: {' '.join(str(exc).split())}") from None
    if raw is None and empty_ok:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the {what} must be a mapping at the top level, got {type(raw).__name__}")
    return raw

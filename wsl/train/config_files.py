"""Reading experiment YAML files: ``extends:`` chains, deep merge, and the ``data.zoo`` path.

A config file may start from other files::

    extends: _base/digits-cnn-gs.yaml            # or a list, merged left to right
    model: {name: hnp, channels: [16, 16, 16]}

Rules:

* ``extends`` paths are relative to the file that names them; a base may extend
  further files (chains), and a file reached twice along one chain is a cycle
  (:class:`~wsl.errors.ConfigError` listing the files).
* The bases are merged left to right, then the file itself on top. Mappings
  merge key by key, at any depth; every other value (lists, scalars, ``null``)
  replaces the base's. One exception: a ``model`` whose ``name`` differs from
  the base's replaces the whole section, because constructor arguments belong
  to one model.
* ``key=value`` overrides (:func:`wsl.train.config.apply_overrides`) apply after
  all of this.

A relative ``data.zoo`` is read from the current directory, like every other
path on the command line; the README runs everything from the repository root,
where ``wsl zoo generate ... -o zoos-out/NAME`` puts its zoos.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

from wsl.errors import ConfigError
from wsl.io.yaml_file import read_yaml_mapping

__all__ = ["check_zoo_path", "deep_merge", "read_config_file"]


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The YAML mapping in ``path`` with its ``extends`` chain resolved and merged."""
    return _read(Path(path), ())


def _read(path: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    key = path.resolve()
    if key in chain:
        names = " -> ".join(str(p) for p in (*chain, key))
        raise ConfigError(f"{path}: 'extends' cycle: {names}; remove one of these extends")
    raw = _load_yaml(path)
    bases = raw.pop("extends", None)
    if bases is None:
        return raw
    if isinstance(bases, str):
        bases = [bases]
    if not (isinstance(bases, list) and bases and all(isinstance(b, str) and b for b in bases)):
        raise ConfigError(f"{path}: 'extends' must be a file name or a list of file names, got {bases!r}")
    merged: dict[str, Any] = {}
    for name in bases:
        base = path.parent / name
        if not base.is_file():
            raise ConfigError(f"{path}: extends '{name}', but {base} is not a file "
                              "(extends paths are relative to the file that names them)")
        merged = deep_merge(merged, _read(base, (*chain, key)))
    return deep_merge(merged, raw)


def _load_yaml(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, what="config", empty_ok=True)


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge recursively, anything else in ``top`` replaces (see module doc)."""
    out = copy.deepcopy(dict(base))
    for k, v in top.items():
        old = out.get(k)
        if k == "model" and _model_name(old) is not None and _model_name(v) not in (None, _model_name(old)):
            out[k] = copy.deepcopy(v)
        elif k == "model" and isinstance(old, str) and isinstance(v, Mapping):
            out[k] = deep_merge({"name": old}, v)
        elif isinstance(old, Mapping) and isinstance(v, Mapping):
            out[k] = deep_merge(old, v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _model_name(section: Any) -> Any:
    if isinstance(section, str):
        return section
    return section.get("name") if isinstance(section, Mapping) else None


def check_zoo_path(zoo: str, where: str = "config") -> None:
    """Raise :class:`ConfigError` if ``data.zoo`` is a local path that does not exist, saying how to make it.

    URIs (``hf://...``) pass; an existing path that is not a zoo is left to
    :func:`wsl.zoo.load_zoo` to report.
    """
    if "://" in zoo or Path(zoo).exists():
        return
    rel = "" if Path(zoo).is_absolute() else f" (relative to the current directory {Path.cwd()})"
    recipe = Path("zoos") / f"{Path(zoo).name}.yaml"
    if recipe.is_file():
        make = f"create it with `wsl zoo generate {recipe} -o {zoo}`"
    else:
        make = f"create it with `wsl zoo generate zoos/RECIPE.yaml -o {zoo}` from the repository root"
    raise ConfigError(f"{where}: data.zoo {zoo} does not exist{rel}; {make}, or pass data.zoo=PATH")

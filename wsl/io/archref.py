"""Architecture references: how to rebuild the ``nn.Module`` behind a state_dict.

A reference is one of:

* an ``nn.Module`` (used as is);
* a ``dict``: a wsl JSON architecture description (``wsl.archs.describe.build``)
  or a Hugging Face ``config.json`` (has ``model_type`` and no ``format``;
  built with ``wsl.archs.hf.from_hf_config``);
* a string: a JSON object (``"{...}"``); a path to a ``.json`` file; a factory
  ``package.module:factory`` or ``path/to/file.py:factory``; or a built-in name
  in ``wsl.archs.registry.REGISTRY`` (``"resnet18"``). Factories and names may
  take literal arguments, ``"resnet18(num_classes=10)"``, parsed with
  ``ast.literal_eval`` (never ``eval``).

Factory references run code by design; pass ``allow_code=False`` when the
reference itself is untrusted. Architectures found *inside* a checkpoint
(``config.json``, safetensors ``wsl_arch`` metadata) are only ever treated as
JSON data, never as code references.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from wsl.errors import ArchitectureError, CheckpointError, WslError
from wsl.io.checkpoint import (
    check_state_dict,
    load_checkpoint_dir_config,
    load_state_dict,
    read_checkpoint_metadata,
    read_json_object,
)
from wsl.space.weightspace import WeightSpace

__all__ = ["ArchRef", "load_model", "parse_call_args", "resolve_arch", "space_from_state_dict"]

ArchRef = nn.Module | dict[str, Any] | str | os.PathLike[str]
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_FORMS = (
    "an nn.Module, a JSON description (dict, '{...}' or a .json path), "
    "'package.module:factory', 'path/to/file.py:factory', or a registered name like "
    "'resnet18(num_classes=10)'"
)


def _err(ref: object, what: str) -> ArchitectureError:
    return ArchitectureError(f"architecture {ref!r}: {what}")


def parse_call_args(text: str, *, ref: str = "") -> tuple[list[Any], dict[str, Any]]:
    """Parse ``"1, k='v'"`` into literal positional and keyword arguments (no ``eval``)."""
    label = ref or text
    try:
        tree = ast.parse(f"_f({text})", mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        raise _err(label, f"cannot parse arguments ({exc})") from exc
    call = tree.body
    ok = isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "_f"
    if not ok:
        raise _err(label, "arguments are not a single call")
    try:
        args = [ast.literal_eval(a) for a in call.args]
        kwargs: dict[str, Any] = {}
        for kw in call.keywords:
            if kw.arg is None:
                raise ValueError("'**' expansion is not allowed")
            kwargs[kw.arg] = ast.literal_eval(kw.value)
    except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as exc:
        raise _err(label, f"arguments must be Python literals ({exc})") from exc
    return args, kwargs


def _split_call(text: str) -> tuple[str, str | None]:
    """Split ``head(args)`` into ``(head, args)``; ``(text, None)`` without a call."""
    if not text.endswith(")"):
        return text, None
    for i, ch in enumerate(text):
        if ch != "(":
            continue
        inner = text[i + 1 : -1]
        try:
            tree = ast.parse(f"_f({inner})", mode="eval")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        if isinstance(tree.body, ast.Call):
            return text[:i].rstrip(), inner
    return text, None


def _check_module(obj: Any, label: str, what: str) -> nn.Module:
    if not isinstance(obj, nn.Module):
        raise _err(label, f"{what} returned a {type(obj).__name__}, not a torch.nn.Module")
    return obj


def _wrap_call(label: str, what: str, fn: Any, *args: Any, **kwargs: Any) -> nn.Module:
    try:
        result = fn(*args, **kwargs)
    except WslError as exc:
        raise _err(label, f"{what} failed: {exc}") from exc
    except (Exception, SystemExit) as exc:
        raise _err(label, f"{what} raised {type(exc).__name__}: {exc}") from exc
    return _check_module(result, label, what)


def _archs(name: str, label: str) -> ModuleType:
    try:
        return importlib.import_module(f"wsl.archs.{name}")
    except ImportError as exc:
        raise _err(label, f"wsl.archs.{name} unavailable: {exc}") from exc


def _from_dict(desc: dict[str, Any], label: str) -> nn.Module:
    """Build a wsl description, or a HF config (``model_type`` and no ``format``)."""
    if "model_type" in desc and "format" not in desc:
        reg = _archs("registry", label)
        return _wrap_call(label, "from_hf_config", reg.from_hf_config, desc)
    describe = _archs("describe", label)
    return _wrap_call(label, "building the description", describe.build, desc)


def _from_json_text(text: str, label: str) -> nn.Module:
    try:
        desc = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise _err(label, f"invalid JSON: {exc.msg} at {where}") from exc
    except (ValueError, RecursionError) as exc:
        raise _err(label, f"invalid JSON: {exc}") from exc
    if not isinstance(desc, dict):
        raise _err(label, "JSON must be an object")
    return _from_dict(desc, label)


def _import_target(target: str, label: str) -> ModuleType:
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    if not is_file:
        if not _DOTTED.match(target):
            raise _err(label, f"{target!r} is not a module name")
        try:
            return importlib.import_module(target)
        except ModuleNotFoundError as exc:
            if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
                raise _err(label, f"module {target!r} not found") from exc
            raise _err(label, f"importing {target!r} failed: {exc}") from exc
        except Exception as exc:
            raise ArchitectureError(
                f"architecture {label!r}: importing {target!r} raised {type(exc).__name__}: {exc}"
            ) from exc
    path = Path(target).expanduser()
    if not path.is_file():
        raise _err(label, f"file {str(path)!r} not found")
    resolved = path.resolve()
    mod_name = "_wsl_archref_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(mod_name, resolved)
    if spec is None or spec.loader is None:
        raise _err(label, f"cannot load {str(path)!r} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(mod_name, None)
        if not isinstance(exc, (Exception, SystemExit)):
            raise
        raise ArchitectureError(
            f"architecture {label!r}: executing {str(path)!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    return module


def _from_factory(target: str, attr: str, args: str | None, label: str) -> nn.Module:
    module = _import_target(target, label)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise _err(label, f"{target!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    pos, kw = parse_call_args(args, ref=label) if args is not None else ([], {})
    if isinstance(obj, nn.Module):
        if args is not None:
            raise _err(label, f"{attr!r} is a module instance, not callable")
        return obj
    if not callable(obj):
        raise _err(label, f"{attr!r} is not callable")
    return _wrap_call(label, f"factory {attr!r}", obj, *pos, **kw)


def _from_registry(name: str, args: str | None, label: str) -> nn.Module:
    """Call a factory from ``wsl.archs.registry.REGISTRY`` (name -> factory)."""
    reg = _archs("registry", label)
    pos, kw = parse_call_args(args, ref=label) if args is not None else ([], {})
    table = getattr(reg, "REGISTRY", None)
    if not isinstance(table, Mapping):
        raise _err(label, "wsl.archs.registry has no REGISTRY mapping")
    form = getattr(reg, "call_form", lambda n, fn=None: n)  # 'mlp(sizes=[64, 32, 10])'
    if name not in table:
        known = ", ".join(form(n, table[n]) for n in sorted(table))
        raise _err(label, f"{name!r} is not registered (known: {known})")
    try:
        inspect.signature(table[name]).bind(*pos, **kw)
    except TypeError as exc:
        raise _err(label, f"{exc}; write it as {form(name, table[name])!r}") from None
    except ValueError:  # no signature to check: the call itself reports
        pass
    return _wrap_call(label, f"built-in {name!r}", table[name], *pos, **kw)


def resolve_arch(ref: ArchRef, *, allow_code: bool = True) -> nn.Module:
    """Turn an architecture reference into an ``nn.Module`` (see module docstring).

    With ``allow_code=False`` only modules, JSON descriptions and registered
    names are accepted; ``module:factory`` and ``file.py:factory`` are refused.
    """
    if isinstance(ref, nn.Module):
        return ref
    if isinstance(ref, dict):
        return _from_dict(ref, "<dict>")
    if isinstance(ref, os.PathLike):
        ref = os.fspath(ref)
    if not isinstance(ref, str):
        kind = type(ref).__name__
        raise ArchitectureError(f"architecture reference of type {kind}; expected {_FORMS}")
    text = ref.strip()
    if not text:
        raise ArchitectureError(f"empty architecture reference; expected {_FORMS}")
    if text.startswith("{"):
        return _from_json_text(text, text if len(text) < 80 else text[:77] + "...")
    if text.lower().endswith(".json"):
        desc = read_json_object(text, what="architecture JSON", error=ArchitectureError)
        return _from_dict(desc, text)
    head, args = _split_call(text)
    if ":" in head:
        target, attr = head.rsplit(":", 1)
        if _DOTTED.match(attr.strip()) and target.strip():
            if not allow_code:
                raise _err(ref, "code references (module:factory, file.py:factory) not allowed")
            return _from_factory(target.strip(), attr.strip(), args, text)
    if _DOTTED.match(head) and "." not in head:
        return _from_registry(head, args, text)
    raise _err(ref, f"unrecognized reference; expected {_FORMS}")


def _arch_from_checkpoint(path: str | os.PathLike[str]) -> nn.Module:
    meta = read_checkpoint_metadata(path).get("wsl_arch")
    if meta is not None:
        return _from_json_text(meta, f'{path} __metadata__["wsl_arch"]')
    cfg = load_checkpoint_dir_config(path)
    if cfg is not None:
        p = Path(path)
        return _from_dict(cfg, str((p if p.is_dir() else p.parent) / "config.json"))
    raise ArchitectureError(
        f"{path}: no architecture found (no 'wsl_arch' safetensors metadata and no "
        "config.json); pass one with --arch (e.g. --arch resnet18 or --arch pkg.mod:factory)"
    )


def _normalize_hf(
    module: nn.Module, sd: dict[str, torch.Tensor], where: str
) -> dict[str, torch.Tensor]:
    """Adapt Hugging Face key conventions (prefixes, gamma/beta) for HF-style modules."""
    try:
        hf = importlib.import_module("wsl.archs.hf")
    except ImportError:
        return sd
    fn = getattr(hf, "normalize_hf_state_dict", None)
    if fn is None:
        return sd
    try:
        return dict(fn(module, sd))
    except Exception as exc:
        raise CheckpointError(f"{where}: normalizing Hugging Face keys failed: {exc}") from exc


def load_model(
    path: str | os.PathLike[str],
    arch: ArchRef | None = None,
    *,
    strict: bool = True,
    device: str = "cpu",
    allow_code: bool = True,
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Load a checkpoint into its architecture; return ``(module in eval mode, state_dict)``.

    The architecture comes from ``arch``, else the safetensors ``wsl_arch``
    metadata, else the ``config.json`` next to the weights. Modules with a
    ``base_model_prefix`` (the local Hugging Face ports) get their keys adapted
    by ``wsl.archs.hf.normalize_hf_state_dict`` first. With ``strict`` the
    state_dict must match ``module.state_dict()`` exactly (names and shapes);
    without it missing/unexpected names are tolerated but shapes must agree.
    """
    sd = load_state_dict(path, device=device)
    if arch is not None:
        module = resolve_arch(arch, allow_code=allow_code)
    else:
        module = _arch_from_checkpoint(path)
    if isinstance(getattr(module, "base_model_prefix", None), str):
        sd = _normalize_hf(module, sd, str(path))
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if strict:
        check_state_dict(expected, sd, where=str(path))
    else:
        common = {k: v for k, v in expected.items() if k in sd}
        check_state_dict(common, {k: v for k, v in sd.items() if k in common}, where=str(path))
    try:
        module.load_state_dict(sd, strict=strict)
    except Exception as exc:
        raise CheckpointError(f"{path}: load_state_dict failed: {exc}") from exc
    return module.eval(), sd


def space_from_state_dict(state_dict: Mapping[str, torch.Tensor], arch: ArchRef, example_input: Any = None, *,
                          allow_code: bool = True) -> WeightSpace:
    """The :class:`~wsl.space.WeightSpace` of ``arch`` (any reference :func:`resolve_arch` accepts), checked
    strictly against ``state_dict`` (a :class:`~wsl.errors.StateDictMismatchError` names missing, unexpected
    and mis-shaped entries)."""
    space = WeightSpace.from_module(resolve_arch(arch, allow_code=allow_code), example_input)
    space.check(state_dict, where=f"architecture {arch!r}" if isinstance(arch, str) else "")
    return space

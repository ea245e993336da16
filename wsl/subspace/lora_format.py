"""One PEFT LoRA adapter folder: its config rules, key naming and the update ``dW = s B A``.

A LoRA adapter (PEFT's on-disk format: a folder with ``adapter_config.json``
and ``adapter_model.safetensors``) adds to each target module of a frozen base
model a low-rank update. For a ``Linear`` target with ``A`` (``r x in``) and
``B`` (``out x r``)::

    dW = s * B @ A              (out x in; transposed when fan_in_fan_out)
    s  = alpha / r              (alpha / sqrt(r) with use_rslora)

where ``r`` and ``alpha`` are the config's ``r`` / ``lora_alpha`` unless a key
of ``rank_pattern`` / ``alpha_pattern`` matches the module (PEFT's rule: the
first key ``k`` in the pattern's order with ``re.match(rf"(.*\\.)?({k})$",
module)``). Embedding targets (``lora_embedding_A``: ``r x num_embeddings``,
``lora_embedding_B``: ``dim x r``) give ``dW = s * (B @ A)^T``; convolution
targets (``A``: ``r x in x k...``, ``B``: ``out x r x 1...``) give
``dW[o] = s * sum_j B[o, j] A[j]``. This matches ``get_delta_weight`` of PEFT's
``lora.Linear``, ``lora.Embedding`` and ``lora.Conv2d`` (checked against
PEFT's own merge in the tests when PEFT is installed; it is not a dependency).

Keys are PEFT's saved names, ``base_model.model.<module>.lora_A.weight``, with
or without an adapter-name segment (``...lora_A.default.weight``); the
``base_model.model.`` prefix is dropped from module names. Other tensors
(``modules_to_save`` copies, trainable tokens) are listed in ``ignored``.

Refused, with a :class:`CheckpointError` that names the adapter and the reason
(rather than a wrong ``dW``): a PEFT type other than LoRA, DoRA
(``use_dora``, or ``lora_magnitude_vector`` tensors), ``lora_bias``,
``target_parameters`` (LoRA on raw parameters), the LoRA variants that change
what ``A`` and ``B`` mean (QALoRA, block-diagonal LoRA, VeLoRA, MonteCLoRA,
KaSA, Arrow), initialisations that rewrite the base weights (PiSSA, CorDA,
OLoRA, LoftQ, LoRA-GA: their ``B @ A`` is relative to a modified base unless
converted), grouped convolutions, a rank that disagrees with the config, and
``.bin`` (pickle) adapters.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wsl.errors import CheckpointError
from wsl.io.checkpoint import read_json_object

__all__ = ["CONFIG", "PREFIX", "WEIGHTS", "Adapter", "LoraTarget", "pattern_value"]

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.(?P<factor>lora_(?:embedding_)?[AB])(?P<rest>(?:\.[^.]+){0,2})$")
_VARIANTS = ("use_dora", "lora_bias", "target_parameters", "use_qalora", "use_bdlora", "velora_config",
             "monteclora_config", "kasa_config", "arrow_config")
_BASE_REWRITING_INITS = ("pissa", "corda", "olora", "loftq", "lora_ga")
_FLOATS = {"F64", "F32", "F16", "BF16"}


def pattern_value(pattern: dict[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's per-module override: the value of the first key ``k`` that matches ``(.*\\.)?(k)$``, else ``default``."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


@dataclass(frozen=True)
class LoraTarget:
    """One adapted module: its factors' keys and shapes, its ``dW`` shape, rank and scale."""

    module: str
    kind: str  # "linear" | "embedding" | "conv"
    a_key: str
    b_key: str
    a_shape: tuple[int, ...]
    b_shape: tuple[int, ...]
    shape: tuple[int, ...]
    r: int
    alpha: float
    scale: float
    fan_in_fan_out: bool

    @property
    def transposed(self) -> bool:
        """Whether ``dW`` is ``(B A)^T`` (embeddings, and linear targets with ``fan_in_fan_out``)."""
        return self.kind == "embedding" or (self.kind == "linear" and self.fan_in_fan_out)


class Adapter:
    """One PEFT LoRA adapter folder, read lazily through a memory-mapped safetensors handle."""

    def __init__(self, folder: str | os.PathLike[str], adapter_name: str | None = None, label: str | None = None):
        from safetensors import safe_open

        self.folder = Path(folder)
        self.label = label or self.folder.name
        self.config = read_json_object(self.folder / CONFIG, what="LoRA adapter config")
        weights = self.folder / WEIGHTS
        if not weights.is_file():
            bins = sorted(p.name for p in self.folder.glob("adapter_model*.bin"))
            hint = f" (found {bins[0]}: pickle adapters are not read; re-save with safe_serialization=True)" if bins \
                else ""
            raise CheckpointError(f"adapter {self.label}: no {WEIGHTS} in {self.folder}{hint}")
        self._check_config()
        try:
            self.handle = safe_open(str(weights), framework="pt")
        except Exception as exc:  # noqa: BLE001 - any reader failure is a bad file
            raise CheckpointError(f"adapter {self.label}: {weights} is not a readable safetensors file ({exc})") \
                from None
        self.targets, self.ignored = self._parse_keys(adapter_name)

    # -- config and keys -------------------------------------------------------------------------------------
    def _fail(self, what: str) -> CheckpointError:
        return CheckpointError(f"adapter {self.label} ({self.folder}): {what}")

    def _check_config(self) -> None:
        c = self.config
        kind = str(c.get("peft_type", "LORA")).upper()
        if kind != "LORA":
            raise self._fail(f"peft_type {kind!r} is not LoRA; only LoRA adapters are read")
        for key in _VARIANTS:
            if c.get(key):
                raise self._fail(f"{key}={c[key]!r} is not supported (its A and B do not give dW = s B A); "
                                 "analyse plain LoRA adapters")
        init = str(c.get("init_lora_weights", True)).lower()
        if init.startswith(_BASE_REWRITING_INITS):
            raise self._fail(f"init_lora_weights={c['init_lora_weights']!r} rewrites the base weights, so B A is not "
                             "the update to the published base; convert it with PEFT's "
                             "path_initial_model_for_weight_conversion first")
        for key in ("r", "lora_alpha"):
            value = c.get(key, 8)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise self._fail(f"config field {key} must be a positive number, got {value!r}")
        for key in ("rank_pattern", "alpha_pattern"):
            if not isinstance(c.get(key) or {}, dict):
                raise self._fail(f"config field {key} must be an object (module pattern -> value)")

    def _parse_keys(self, adapter_name: str | None) -> tuple[dict[str, LoraTarget], list[str]]:
        entries: list[tuple[str, str, str]] = []
        names: set[str] = set()
        ignored: list[str] = []
        for key in self.handle.keys():
            if "lora_magnitude_vector" in key:
                raise self._fail(f"tensor {key!r} is a DoRA magnitude; DoRA adapters are not supported")
            m = _KEY.match(key)
            if m is None:
                ignored.append(key)  # modules_to_save, trainable tokens: full tensors, not low-rank updates
                continue
            parts = [p for p in m["rest"].split(".") if p]
            if parts and parts[-1] in ("weight", "bias") and not m["factor"].startswith("lora_embedding"):
                param, parts = parts[-1], parts[:-1]
            else:
                param = "weight"
            if param == "bias":
                raise self._fail(f"tensor {key!r} is a LoRA bias (lora_bias); not supported")
            if len(parts) > 1:
                ignored.append(key)
                continue
            name = parts[0] if parts else None
            if adapter_name is not None and name not in (None, adapter_name):
                continue
            names.add(name or "")
            module = m["module"][len(PREFIX):] if m["module"].startswith(PREFIX) else m["module"]
            entries.append((module, m["factor"], key))
        if len(names) > 1:
            raise self._fail(f"the file holds several adapters {sorted(names)}; choose one with adapter_name=")
        found: dict[str, dict[str, str]] = {}
        for module, factor, key in entries:
            slot = found.setdefault(module, {})
            if factor[-1] in slot:
                raise self._fail(f"two {factor} tensors for module {module!r} ({slot[factor[-1]]!r}, {key!r})")
            slot[factor[-1]] = key
        if not found:
            raise self._fail("no lora_A / lora_B tensors")
        return {mod: self._target(mod, keys) for mod, keys in found.items()}, ignored

    def _target(self, module: str, keys: dict[str, str]) -> LoraTarget:
        if set(keys) != {"A", "B"}:
            missing = "B" if "A" in keys else "A"
            raise self._fail(f"module {module!r} has no lora_{missing} tensor")
        a_key, b_key = keys["A"], keys["B"]
        for k in (a_key, b_key):
            if self.handle.get_slice(k).get_dtype() not in _FLOATS:
                raise self._fail(f"tensor {k!r} is not floating point")
        a = tuple(int(s) for s in self.handle.get_slice(a_key).get_shape())
        b = tuple(int(s) for s in self.handle.get_slice(b_key).get_shape())
        c = self.config
        r = pattern_value(c.get("rank_pattern"), module, c.get("r", 8))
        alpha = pattern_value(c.get("alpha_pattern"), module, c.get("lora_alpha", 8))
        for what, value in (("rank", r), ("alpha", alpha)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise self._fail(f"module {module!r}: {what} {value!r} (from the config) is not a positive number")
        r, alpha = int(r), float(alpha)
        fifo = bool(c.get("fan_in_fan_out", False))
        embedding = "lora_embedding" in a_key
        if embedding and len(a) == 2 and len(b) == 2 and a[0] == b[1]:
            kind, shape = "embedding", (a[1], b[0])
        elif len(a) == 2 and len(b) == 2 and a[0] == b[1]:
            kind, shape = "linear", ((a[1], b[0]) if fifo else (b[0], a[1]))
        elif len(a) >= 3 and len(b) == len(a) and all(s == 1 for s in b[2:]) and b[1] == a[0]:
            kind, shape = "conv", (b[0], *a[1:])
        elif len(a) >= 3 and len(b) == len(a):
            raise self._fail(f"module {module!r}: lora_B {b} does not match lora_A {a} (grouped convolution?); "
                             "not supported")
        else:
            raise self._fail(f"module {module!r}: lora_A {a} and lora_B {b} are not the factors of a LoRA update")
        if a[0] != r:
            raise self._fail(f"module {module!r}: lora_A has rank {a[0]} but the config says r={r}")
        scale = alpha / math.sqrt(r) if c.get("use_rslora", False) else alpha / r
        return LoraTarget(module, kind, a_key, b_key, a, b, shape, r, alpha, scale, fifo)

    # -- tensors ----------------------------------------------------------------------------------------------
    @property
    def base_model(self) -> tuple[Any, Any]:
        return self.config.get("base_model_name_or_path"), self.config.get("revision")

    def factor(self, module: str, which: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``A`` or ``B`` of ``module`` in its stored shape."""
        t = self.targets[module]
        return self.handle.get_tensor(t.a_key if which == "A" else t.b_key).to(dtype)

    def factor_rows(self, module: str, which: str, r0: int, r1: int, dtype: torch.dtype) -> torch.Tensor:
        """Rows ``r0:r1`` of ``A`` or ``B``, flattened to one vector."""
        t = self.targets[module]
        return self.handle.get_slice(t.a_key if which == "A" else t.b_key)[r0:r1].to(dtype).reshape(-1)

    def delta_rows(self, module: str, r0: int, r1: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``r0:r1`` of ``dW`` (first axis of its shape), computed from the factors' slices only."""
        t = self.targets[module]
        work = torch.float64 if dtype == torch.float64 else torch.float32
        a_sl, b_sl = self.handle.get_slice(t.a_key), self.handle.get_slice(t.b_key)
        if t.transposed:  # dW = s (B A)^T: rows of dW are columns of A
            out = a_sl[:, r0:r1].to(work).T @ b_sl[:, :].to(work).T
        else:  # rows of dW are rows of B
            b = b_sl[r0:r1].to(work).reshape(r1 - r0, t.r)
            out = b @ a_sl[:].to(work).reshape(t.r, -1)
        return (out * t.scale).reshape(r1 - r0, *t.shape[1:]).to(dtype)

    def delta(self, module: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole ``dW`` of ``module``."""
        return self.delta_rows(module, 0, self.targets[module].shape[0], dtype)

"""Example inputs for ``transformers`` models, read from their config (no ``transformers`` import).

:func:`hf_example_inputs` returns the keyword arguments a Hugging Face model's
``forward`` needs for one traced call: its main input (``input_ids``,
``pixel_values``, ``input_features`` or ``input_values``, named by the
model's ``main_input_name``) shaped from its config, ``decoder_input_ids``
for encoder-decoders, and ``use_cache=False`` (a key/value cache is state
kept between calls, not part of one call's function). Tensors live on the
model's device, so a model built on the meta device is traced without
allocating anything. :mod:`wsl.space.trace` asks the guessers registered
with :func:`wsl.space.trace.register_input_guesser`; this one is registered
by :mod:`wsl.hub` (imported by ``import wsl``).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

__all__ = ["hf_example_inputs"]


def _device(model: nn.Module) -> torch.device:
    """The model's device: meta if any parameter is (a stray legacy ``torch.Tensor(n)`` stays on the CPU)."""
    devices = {t.device for t in model.parameters()}
    meta = [d for d in devices if d.type == "meta"]
    return meta[0] if meta else next(iter(devices), torch.device("cpu"))


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


def _audio_length(config: Any) -> int:
    """Samples of raw audio that a convolutional feature extractor turns into at least 8 frames."""
    kernels = list(_get(config, "conv_kernel", default=[1]))
    strides = list(_get(config, "conv_stride", default=[1]))
    length = 8
    for k, s in zip(reversed(kernels), reversed(strides)):
        length = (length - 1) * int(s) + int(k)
    return length


def hf_example_inputs(model: nn.Module, batch: int = 2, seq: int = 8,
                      generator: torch.Generator | None = None) -> dict[str, Any] | None:
    """Keyword inputs for one call of a ``transformers`` model, or None if ``model`` is not one."""
    config = getattr(model, "config", None)
    name = getattr(model, "main_input_name", None)
    if config is None or not isinstance(name, str):
        return None
    dev = _device(model)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    out: dict[str, Any] = {}
    if name == "input_ids":
        vocab = int(_get(config, "vocab_size", default=2))
        out[name] = torch.randint(0, vocab, (batch, seq), generator=gen).to(dev)
        if getattr(config, "is_encoder_decoder", False):
            out["decoder_input_ids"] = torch.randint(0, vocab, (batch, seq), generator=gen).to(dev)
    elif name == "pixel_values":
        size = _get(config, "image_size", default=224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        chans = int(_get(config, "num_channels", default=3))
        out[name] = torch.randn(batch, chans, int(h), int(w), generator=gen).to(dev)
    elif name == "input_features":
        frames = 2 * int(_get(config, "max_source_positions", default=seq))
        out[name] = torch.randn(batch, int(_get(config, "num_mel_bins", default=80)), frames, generator=gen).to(dev)
    elif name == "input_values":
        out[name] = torch.randn(batch, _audio_length(config), generator=gen).to(dev)
    else:
        return None
    if getattr(config, "use_cache", None) is not None and _accepts(model, "use_cache"):
        out["use_cache"] = False
    return out


def _accepts(model: nn.Module, kw: str) -> bool:
    """Whether ``forward`` names ``kw`` as a parameter (not only through ``**kwargs``)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return kw in params

"""timm 1.0 models from tiny configs: traced and exact under two random permutations.

ConvNeXt (both MLP forms), RegNetX/RegNetY (grouped convs, squeeze-excite), DenseNet (concatenations),
Inception-v3 blocks, MLP-Mixer (token mixing), ResNeXt and SE-ResNeXt. Skipped when timm is not installed.
timm's ViT/DeiT/Swin/LeViT need the attention-from-reshape rules (a separate part of issue 21) and are not
listed here.

Fixture note: timm imports ``torchvision`` when it loads (for ``FrozenBatchNorm2d`` and its data
transforms), and torchvision is neither a dependency of wsl nor importable here. If torchvision cannot be
imported, the ``timm`` fixture below puts placeholder ``torchvision`` modules in ``sys.modules`` only while
timm is imported and removes them afterwards; the models built here use none of those names.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from typing import Any, Callable, Iterator

import pytest
import torch
from torch import nn

from tests.reach_checks import check_preserved

_STUBBED = ("torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
            "torchvision.transforms.functional", "torchvision.datasets", "torchvision.utils")


class _AnyAttr(type):
    """A placeholder class whose class attributes (``InterpolationMode.BILINEAR``) are strings."""

    def __getattr__(cls, name: str) -> str:
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class _StubModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _AnyAttr(name, (nn.Module,), {})


def _torchvision_importable() -> bool:
    try:
        importlib.import_module("torchvision")
        return True
    except Exception:  # noqa: BLE001 - a broken torchvision install fails in many ways
        return False


@pytest.fixture(scope="module")
def timm() -> Iterator[Any]:
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (pip install timm)")
    if "timm" in sys.modules or _torchvision_importable():
        yield importlib.import_module("timm")
        return
    saved = {n: sys.modules.get(n) for n in _STUBBED}
    try:
        for n in _STUBBED:
            mod = _StubModule(n)
            mod.__path__ = []  # a package, so submodule imports resolve
            sys.modules[n] = mod
            if "." in n:
                parent, child = n.rsplit(".", 1)
                setattr(sys.modules[parent], child, mod)
        module = importlib.import_module("timm")
    finally:
        for n, old in saved.items():
            if old is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = old
    yield module


def _models(timm: Any) -> dict[str, Callable[[], nn.Module]]:
    m = {k: importlib.import_module(f"timm.models.{k}") for k in
         ("convnext", "regnet", "densenet", "mlp_mixer", "resnet", "inception_v3")}
    regnet_cfg = dict(depth=4, w0=8, wa=12, wm=1.5, group_size=4, stem_width=8)
    iv3 = m["inception_v3"]

    def inception_blocks() -> nn.Module:  # the blocks of timm's InceptionV3, with its conv_block, at 8 stem channels
        conv = functools.partial(iv3.ConvNormAct, padding=0, norm_kwargs=dict(eps=1e-3))
        return nn.Sequential(conv(3, 8, kernel_size=3, padding=1), iv3.InceptionA(8, pool_features=4, conv_block=conv),
                             iv3.InceptionB(228, conv_block=conv), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(708, 3))

    return {
        "convnext": lambda: m["convnext"].ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=3),
        "convnext_conv_mlp": lambda: m["convnext"].ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 8, 16, 16), num_classes=3,
                                                            conv_mlp=True),
        "regnetx": lambda: m["regnet"].RegNet(m["regnet"].RegNetCfg(**regnet_cfg), num_classes=3),
        "regnety": lambda: m["regnet"].RegNet(m["regnet"].RegNetCfg(**regnet_cfg, se_ratio=0.25), num_classes=3),
        "densenet": lambda: m["densenet"].DenseNet(growth_rate=4, block_config=(2, 2), num_classes=3),
        "inception_v3_blocks": inception_blocks,
        "mlp_mixer": lambda: m["mlp_mixer"].MlpMixer(num_classes=3, img_size=32, patch_size=8, num_blocks=2,
                                                     embed_dim=16),
        "resnext": lambda: m["resnet"].ResNet(m["resnet"].Bottleneck, [1, 1, 1, 1], cardinality=4, base_width=16,
                                              stem_width=8, channels=(8, 16, 32, 64), num_classes=3),
        "seresnext": lambda: m["resnet"].ResNet(m["resnet"].Bottleneck, [1, 1, 1, 1], cardinality=4, base_width=16,
                                                stem_width=8, channels=(8, 16, 32, 64), num_classes=3,
                                                block_args=dict(attn_layer="se")),
    }


NAMES = ["convnext", "convnext_conv_mlp", "regnetx", "regnety", "densenet", "inception_v3_blocks", "mlp_mixer",
         "resnext", "seresnext"]


@pytest.mark.parametrize("name", NAMES)
def test_timm_models_trace_and_preserve_function(timm: Any, name: str) -> None:
    torch.manual_seed(0)
    module = _models(timm)[name]().eval()
    size = 35 if name.startswith("inception") else 32  # Inception-v3's blocks run at 35x35
    space = check_preserved(module, torch.randn(2, 3, size, size))
    assert space.permutable_groups()


def test_timm_regnet_has_nested_block_groups(timm: Any) -> None:
    from wsl.space import WeightSpace

    module = _models(timm)["regnetx"]().eval()
    space = WeightSpace.from_module(module, torch.randn(1, 3, 32, 32))
    grouped = [t for t in space.spec.tensors if t.diagonal]
    assert grouped and all(space.groups[t.axes[0][0][0][0]].parent is not None for t in grouped)

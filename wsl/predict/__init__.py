"""Predict a network's generalization from its weights with a shipped or trained predictor.

The package itself is callable: ``wsl.predict(net)`` is :func:`wsl.predict.api.predict`.
"""

import sys
import types
from typing import Any

from wsl.predict.api import (Prediction, choose_predictor, get_predictor, load_network, load_source, predict,
                             predict_many, predict_network)
from wsl.predict.family import check_family, describe_family, summarize
from wsl.predict.shipped import models_dir, shipped

__all__ = ["Prediction", "check_family", "choose_predictor", "describe_family", "get_predictor", "load_network",
           "load_source", "models_dir", "predict", "predict_many", "predict_network", "shipped", "summarize"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Prediction:
        return predict(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

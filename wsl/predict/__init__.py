"""Predict a network's generalization from its weights with a shipped or trained predictor."""

from wsl.predict.api import Prediction, choose_predictor, get_predictor, load_source, predict, predict_many
from wsl.predict.family import check_family, describe_family, summarize
from wsl.predict.shipped import models_dir, shipped

__all__ = ["Prediction", "check_family", "choose_predictor", "describe_family", "get_predictor", "load_source",
           "models_dir", "predict", "predict_many", "shipped", "summarize"]

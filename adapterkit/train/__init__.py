"""Training: the loop (``loop``), task data (``data``) and model loading (``models``)."""

from .loop import TrainArgs, TrainResult, accuracy, encode, fit, predict, train_adapter

__all__ = ["TrainArgs", "TrainResult", "accuracy", "encode", "fit", "predict", "train_adapter"]

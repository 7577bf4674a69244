"""Training: the loop (``loop``), task data (``data``, ``datasets``, ``sft``), metrics, model
loading (``models``, ``smollm2``), and ``transformers.Trainer`` / TRL integration
(``KitTrainer``, ``KitTrainerMixin``, ``KitSFTTrainer``: imported on first use)."""

from typing import Any

from .loop import TrainArgs, TrainResult, accuracy, encode, fit, predict, train_adapter

__all__ = ["KitSFTTrainer", "KitTrainer", "KitTrainerMixin", "TrainArgs", "TrainResult", "accuracy",
           "encode", "fit", "predict", "train_adapter"]


def __getattr__(name: str) -> Any:
    if name in ("KitTrainer", "KitTrainerMixin"):
        from . import trainer

        return getattr(trainer, name)
    if name == "KitSFTTrainer":
        from .sft_trainer import KitSFTTrainer

        return KitSFTTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

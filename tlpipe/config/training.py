"""What the two training sections (`train`, `finetune`) share: early stopping, augmentation, and
the fields of one training phase.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tlpipe.config.base import Section


class EarlyStoppingParams(Section):
    enabled: bool = True
    # *loss is minimised, *accuracy maximised. It also picks the best epoch (the saved weights).
    monitor: Literal["val_accuracy", "val_loss", "accuracy", "loss"] = "val_accuracy"
    patience: int = Field(3, ge=0)
    min_delta: float = Field(0.0, ge=0)


class AugmentParams(Section):
    flip: bool = True
    # Random translation as a fraction of the image side (0: off).
    translate: float = Field(0.1, ge=0, lt=1)
    rotation: float = Field(0.0, ge=0, lt=1)
    zoom: float = Field(0.0, ge=0, lt=1)
    contrast: float = Field(0.0, ge=0, lt=1)


class PhaseParams(Section):
    """The fields of one training phase, shared by `train` and `finetune` (tlpipe.training.phase
    reads them); each section sets its own defaults and adds its own fields."""

    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(128, gt=0)
    epochs: int = Field(10, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()

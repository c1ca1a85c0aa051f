"""params.yaml section `train`: the head on the frozen backbone."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from tlpipe.config.base import Section
from tlpipe.config.training import EarlyStoppingParams


class TrainParams(Section):
    section: ClassVar[str] = "train"

    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    batch_size: int = Field(128, gt=0)
    epochs: int = Field(10, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()
    # Train the head on backbone features computed once and cached in data/features/ (true), or
    # pass every batch through the frozen backbone (false: same model, much slower; benchmarks).
    cache_features: bool = True
    # Batch size of the one-off backbone forward pass that fills the feature cache.
    feature_batch_size: int = Field(64, gt=0)

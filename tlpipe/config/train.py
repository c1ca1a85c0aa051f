"""params.yaml section `train`: the head on the frozen backbone."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tlpipe.config.training import PhaseParams


class TrainParams(PhaseParams):
    section: ClassVar[str] = "train"

    # optimizer, learning_rate, weight_decay, momentum, batch_size, epochs, label_smoothing and
    # early_stopping: PhaseParams's, with its defaults.
    # Train the head on backbone features computed once and cached in data/features/ (true), or
    # pass every batch through the frozen backbone (false: same model, much slower; benchmarks).
    cache_features: bool = True
    # Batch size of the one-off backbone forward pass that fills the feature cache.
    feature_batch_size: int = Field(64, gt=0)

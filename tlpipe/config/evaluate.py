"""params.yaml section `evaluate`: the fine-tuned Keras model on the test split."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tlpipe.config.base import Section


class EvaluateParams(Section):
    section: ClassVar[str] = "evaluate"

    batch_size: int = Field(256, gt=0)
    # Equal-width confidence bins of the expected calibration error and the reliability diagram.
    calibration_bins: int = Field(15, gt=1)
    # How many (true, predicted) class pairs the most-confused table lists.
    top_confusions: int = Field(10, gt=0)
    # Test images in the prediction grid (misclassified ones first, then correct ones).
    grid_images: int = Field(36, gt=0)

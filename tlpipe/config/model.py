"""params.yaml section `model`: the classifier the training stages build."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from tlpipe.config.base import Section


class ModelParams(Section):
    section: ClassVar[str] = "model"

    # Side of the square backbone input; images are resized inside the model, never in memory.
    # null: the backbone's default size (224, 299 for InceptionV3) times image_scale, rounded to
    # a multiple of 8, so `-S backbone=...` switches the size too.
    image_size: int | None = Field(None, gt=0)
    image_scale: float = Field(1.0, gt=0, le=4)
    interpolation: Literal["bilinear", "bicubic", "nearest", "area", "lanczos3", "lanczos5"] = "bilinear"
    # imagenet (Keras download, or the mirror file in weights_dir), none (random init, seeded),
    # or a path to a .weights.h5 file of this backbone (relative paths: from the project root).
    weights: str = "imagenet"
    # Local mirror of ImageNet no-top weights (file names: tlpipe/model/backbones.py, e.g.
    # mobilenet_v2_1.0_224_no_top.weights.h5). With weights=imagenet a backbone whose file is
    # there loads it; any other is downloaded by Keras.
    weights_dir: str | None = None
    # Width multiplier, for the backbones that have one (MobileNet, MobileNetV2); null: 1.0.
    alpha: float | None = Field(None, gt=0)
    pooling: Literal["avg", "max"] = "avg"
    dropout: float = Field(0.2, ge=0, lt=1)
    # Hidden dense layers between pooling and the softmax (empty: linear head).
    head_units: list[int] = []

    @field_validator("head_units")
    @classmethod
    def _positive_units(cls, v: list[int]) -> list[int]:
        if any(u <= 0 for u in v):
            raise ValueError(f"head_units must be positive integers, got {v}")
        return v

    @field_validator("weights")
    @classmethod
    def _weights_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("expected imagenet, none or a path to a .weights.h5 file, got an empty string")
        return v

"""params.yaml sections of the training stages: `model`, `train`, `finetune` and `runtime`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tlpipe.config.base import Section


class ModelParams(Section):
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


class EarlyStoppingParams(Section):
    enabled: bool = True
    # *loss is minimised, *accuracy maximised. It also picks the best epoch (the saved weights).
    monitor: Literal["val_accuracy", "val_loss", "accuracy", "loss"] = "val_accuracy"
    patience: int = Field(3, ge=0)
    min_delta: float = Field(0.0, ge=0)


class TrainParams(Section):
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


class UnfreezeParams(Section):
    """Which part of the backbone fine-tuning trains: exactly one of these is set (null the others).

    top_blocks counts the blocks of tlpipe/model/backbones.py (VGG's block5, ResNet's conv5_block3,
    InceptionV3's mixed10...), so the same value means the same thing for every backbone.
    from_layer N trains backbone.layers[N:], as `for l in base.layers[:N]: l.trainable = False`
    (0: the whole backbone). BatchNorm layers stay frozen whatever is chosen.
    """

    top_layers: int | None = Field(None, ge=0)
    top_blocks: int | None = Field(None, ge=0)
    from_block: str | None = None
    from_layer: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_of(self) -> UnfreezeParams:
        given = {k: v for k, v in self.model_dump().items() if v is not None}
        if len(given) != 1:
            raise ValueError(
                "finetune.unfreeze needs exactly one of top_layers, top_blocks, from_block, from_layer "
                f"(set the others to null), got {given or 'none'}"
            )
        return self


class ScheduleParams(Section):
    kind: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(0.5, ge=0)
    min_learning_rate: float = Field(0.0, ge=0)


class AugmentParams(Section):
    flip: bool = True
    # Random translation as a fraction of the image side (0: off).
    translate: float = Field(0.1, ge=0, lt=1)
    rotation: float = Field(0.0, ge=0, lt=1)
    zoom: float = Field(0.0, ge=0, lt=1)
    contrast: float = Field(0.0, ge=0, lt=1)


class FinetuneParams(Section):
    # false: models/model.keras is the head model as trained by the train stage.
    enabled: bool = True
    unfreeze: UnfreezeParams = UnfreezeParams(top_blocks=2)
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    learning_rate: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    schedule: ScheduleParams = ScheduleParams()
    batch_size: int = Field(64, gt=0)
    epochs: int = Field(5, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    augment: AugmentParams = AugmentParams()
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()
    # Cap on training steps per epoch (null: the whole split). For quick runs on CPU.
    steps_per_epoch: int | None = Field(None, gt=0)
    # Save a resumable backup (weights, optimizer, position) every N training steps, and at every
    # epoch end; a rerun after a kill continues from the last one. 0: epoch ends only.
    backup_every_steps: int = Field(200, ge=0)
    # The final fit: train on train + validation images for `epochs` epochs (a count chosen on
    # validation in an earlier run) and keep the last epoch; early stopping does not apply (the
    # validation images are training images then), so switching this alone goes back and forth
    # between choosing on validation and the final fit. The test split stays held out.
    train_on_val: bool = False


class RuntimeParams(Section):
    """How training runs: numerics, compilation and distribution. Exported models stay float32."""

    # mixed_bfloat16 on CPU and on GPUs of compute capability >= 8.0, mixed_float16 on one older
    # GPU, float32 on several older ones (tlpipe.runtime.resolve); saved models are float32.
    mixed_precision: bool = False
    # Compile the train/eval steps with XLA (jit_compile), without a strategy and without op
    # determinism only (tlpipe.runtime.resolve). Off by default: on CPU it rarely helps.
    xla: bool = False
    # none | mirrored (all local GPUs) | multi_worker (hosts listed in the TF_CONFIG env var).
    strategy: Literal["none", "mirrored", "multi_worker"] = "none"
    # Op determinism: same params, same metrics on CPU. Costs some speed on GPU.
    deterministic: bool = True
    # Seconds between progress lines (with ETA) inside long epochs and feature extraction.
    log_every_seconds: float = Field(30.0, gt=0)

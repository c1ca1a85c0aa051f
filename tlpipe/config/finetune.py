"""params.yaml section `finetune`: the top of the backbone trained end to end."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from tlpipe.config.base import Section
from tlpipe.config.training import AugmentParams, PhaseParams


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


class FinetuneParams(PhaseParams):
    section: ClassVar[str] = "finetune"

    # false: models/model.keras is the head model as trained by the train stage.
    enabled: bool = True
    unfreeze: UnfreezeParams = UnfreezeParams(top_blocks=2)
    # optimizer, weight_decay, momentum, label_smoothing, early_stopping: PhaseParams's; these
    # three with fine-tuning's defaults.
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(64, gt=0)
    epochs: int = Field(5, gt=0)
    schedule: ScheduleParams = ScheduleParams()
    augment: AugmentParams = AugmentParams()
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

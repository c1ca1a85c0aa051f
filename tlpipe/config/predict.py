"""params.yaml section `predict`: batch prediction with the exported model (python -m stages.predict,
outside `dvc repro`: no DVC stage reads it)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from tlpipe.config.base import Section, distinct_providers
from tlpipe.export.contract import ProviderName


class PredictParams(Section):
    """python -m stages.predict: the exported model on unlabeled images (no DVC stage)."""

    section: ClassVar[str] = "predict"

    # fp32: models/model.onnx; fp16 / int8 (tlpipe.export.variants): models/variants/model.<variant>.onnx.
    variant: str = "fp32"
    # In order of preference; the first one that loads is used (and named in the summary).
    providers: list[ProviderName] = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    # false: a session that does not run on the first provider listed is an error (a GPU
    # machine must not silently predict on CPU); true: the next that loads, logged and named
    # in the summary.
    allow_fallback: bool = True
    threads: int = Field(0, ge=0)  # onnxruntime intra-op threads; 0: one per core
    batch_size: int = Field(32, gt=0)
    # table: file,label,confidence,top_k(,p_<class>...),error in input order;
    # submission: Kaggle's id,label, ids in numeric order (the image file name without suffix).
    format: Literal["table", "submission"] = "table"
    top_k: int = Field(3, gt=0)
    # One probability column per class (table), or a <output>.probabilities.csv (submission).
    probabilities: bool = False
    # An unreadable image: reported on its row and in the summary (report), or fatal (fail).
    on_error: Literal["report", "fail"] = "report"
    # Images of another size than the model takes, when training recorded no resize of its own
    # (data.image_size empty): resized like ingest would (center_crop / stretch), or unreadable (refuse).
    resize_mode: Literal["center_crop", "stretch", "refuse"] = "center_crop"
    # Threads decoding images while onnxruntime runs the previous batches (Pillow releases the GIL).
    decode_threads: int = Field(1, gt=0)
    # Decoded batches waiting for the model: bounds memory whatever the number of images.
    queue_batches: int = Field(4, gt=0)
    log_every_seconds: float = Field(30.0, gt=0)  # progress lines with ETA

    _providers = field_validator("providers")(distinct_providers)

    @field_validator("variant")
    @classmethod
    def _exported(cls, v: str) -> str:
        from tlpipe.export.variants import check_variant

        return check_variant(v, fp32=True)

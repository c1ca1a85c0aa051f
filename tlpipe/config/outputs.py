"""params.yaml sections of the stages after training: `evaluate`, `export`, `benchmark`, and `predict`
(batch prediction with the exported model, outside `dvc repro`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tlpipe.config.base import Section


class EvaluateParams(Section):
    batch_size: int = Field(256, gt=0)
    # Equal-width confidence bins of the expected calibration error and the reliability diagram.
    calibration_bins: int = Field(15, gt=1)
    # How many (true, predicted) class pairs the most-confused table lists.
    top_confusions: int = Field(10, gt=0)
    # Test images in the prediction grid (misclassified ones first, then correct ones).
    grid_images: int = Field(36, gt=0)


class ParityParams(Section):
    """Keras vs onnxruntime (CPU) on a seeded sample of test images: the export fails past these limits."""

    images: int = Field(256, gt=0)
    max_abs_diff: float = Field(1e-3, gt=0)
    min_top1_agreement: float = Field(0.999, gt=0, le=1)


class Int8Params(Section):
    """Static post-training quantization (onnxruntime.quantization.quantize_static)."""

    # Calibration images, drawn (seeded) from the train split; never from the test split.
    calibration_images: int = Field(512, gt=0)
    per_channel: bool = True
    # qdq: QuantizeLinear/DequantizeLinear pairs (onnxruntime CPU; TensorRT/CUDA with target gpu);
    # qoperator: QLinearConv & co. (CPU only).
    format: Literal["qdq", "qoperator"] = "qdq"
    # cpu: uint8 asymmetric activations, int8 weights (the u8s8 kernels x86 CPUs run fastest);
    # gpu: int8 symmetric activations and weights (zero points 0), what onnxruntime documents for
    # TensorRT and CUDA; QDQ only.
    target: Literal["cpu", "gpu"] = "cpu"
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    # Quantize weights to 7 bits: avoids int16 overflow in u8s8 kernels on CPUs without VNNI.
    reduce_range: bool = False

    @model_validator(mode="after")
    def _gpu_is_qdq(self) -> Int8Params:
        if self.target == "gpu" and self.format != "qdq":
            raise ValueError(
                f"int8.target='gpu' needs int8.format='qdq' (got {self.format!r}): "
                "TensorRT and CUDA run QDQ models only"
            )
        return self


class ExportParams(Section):
    opset: int = Field(17, ge=13, le=21)
    parity: ParityParams = ParityParams()
    variants: list[Literal["fp16", "int8"]] = ["fp16", "int8"]
    int8: Int8Params = Int8Params()
    # A variant may lose at most this much top-1 (in points) against float32, else export fails.
    max_variant_accuracy_drop: float = Field(3.0, ge=0)
    # Batch size of the onnxruntime passes (parity, variant scoring, calibration).
    batch_size: int = Field(64, gt=0)
    # Test images the variants are scored on (null: the whole test split).
    eval_images: int | None = Field(None, gt=0)

    @field_validator("variants")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"variants must not repeat, got {v}")
        return v


ProviderName = Literal["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class BenchmarkParams(Section):
    # In order of preference. onnxruntime lists GPU providers as available even without a GPU,
    # so the provider the session really runs on is read back and recorded.
    providers: list[ProviderName] = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    # false: a session that does not run on the first provider listed is an error.
    allow_fallback: bool = True
    batch_sizes: list[int] = [1, 8, 32]
    warmup: int = Field(5, ge=0)
    # Timed runs per (model, batch size); duration_s, when set, runs for that long instead.
    iterations: int = Field(30, gt=0)
    duration_s: float | None = Field(None, gt=0)
    # The models take turns this many times per batch size (iterations are split between the
    # turns), so that a change of machine load hits every model alike.
    rounds: int = Field(3, gt=0)
    keras_baseline: bool = True
    threads: int = Field(0, ge=0)  # intra-op threads; 0: onnxruntime's default (one per core)
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    # On CUDA/TensorRT: bind the input to the GPU once, keep outputs there (no host copies in the
    # timed call). Not used on CPU, where it made onnxruntime 1.31.1 slower.
    io_binding: bool = True

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(b <= 0 for b in v):
            raise ValueError(f"batch sizes must be a non-empty list of positive integers, got {v}")
        return v

    @field_validator("providers")
    @classmethod
    def _some(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"providers must be a non-empty list without repeats, got {v}")
        return v


class PredictParams(Section):
    """python -m stages.predict: the exported model on unlabeled images (no DVC stage)."""

    # fp32: models/model.onnx; fp16 / int8: models/variants/model.<variant>.onnx.
    variant: Literal["fp32", "fp16", "int8"] = "fp32"
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

    @field_validator("providers")
    @classmethod
    def _some(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"providers must be a non-empty list without repeats, got {v}")
        return v

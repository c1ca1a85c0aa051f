"""params.yaml section `export`: Keras to ONNX, its parity check and the reduced-precision variants."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tlpipe.config.base import Section


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
    section: ClassVar[str] = "export"

    opset: int = Field(17, ge=13, le=21)
    parity: ParityParams = ParityParams()
    # Names in the registry of variants (tlpipe.export.variants): models/variants/model.<name>.onnx.
    variants: list[str] = ["fp16", "int8"]
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
        from tlpipe.export.variants import check_variant

        for name in v:
            check_variant(name)
        if len(set(v)) != len(v):
            raise ValueError(f"variants must not repeat, got {v}")
        return v

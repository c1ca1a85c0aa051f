"""The registry of export variants: every ONNX file the export stage writes beside models/model.onnx.

A variant is one builder, `build(job, out)` writing `out` from the float32 export (`job`), plus one
entry here; params validation (export.variants, predict.variant), the export stage and predict's
command line ask this table, and the file is models/variants/model.<name>.onnx (tlpipe.paths).
A test or a plugin adds one with `register_variant`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlpipe.export.convert import convert
from tlpipe.export.quantize import calibration_images, to_fp16, to_int8

if TYPE_CHECKING:
    from tlpipe.config.params import Params
    from tlpipe.data.dataset import DatasetInfo
    from tlpipe.paths import Paths

FP32 = "fp32"  # models/model.onnx itself: the reference every variant is scored against


@dataclass(frozen=True)
class Job:
    """What a builder may use: the float32 ONNX file and what it was converted from."""

    fp32_path: Path
    single: Any  # the Keras model without test-time augmentation
    metadata: dict[str, str]  # the ONNX metadata of the float32 model (tlpipe.export.convert)
    info: DatasetInfo
    params: Params
    paths: Paths


@dataclass(frozen=True)
class Variant:
    build: Callable[[Job, Path], None]
    # Named in params (export.variants, predict.variant); false: built by the export stage's own rule.
    selectable: bool = True
    # Its top-1 drop against float32 fails the export past export.max_variant_accuracy_drop.
    gated: bool = True


def _fp16(job: Job, out: Path) -> None:
    to_fp16(job.fp32_path, out)


def _int8(job: Job, out: Path) -> None:
    p = job.params.export
    calibration = calibration_images(job.paths, p.int8.calibration_images, job.params.seed)
    to_int8(job.fp32_path, out, calibration=calibration, p=p.int8, batch_size=p.batch_size)


def _single(job: Job, out: Path) -> None:
    import onnx

    p = job.params.export
    onnx.save(convert(job.single, p.opset, job.info, {**job.metadata, "tta": "none"}), str(out))


VARIANTS: dict[str, Variant] = {
    "fp16": Variant(_fp16),
    "int8": Variant(_int8),
    # With TTA the single-view model is a variant too: the benchmark then shows what TTA costs; its
    # drop is what TTA gains, reported, not gated.
    "single": Variant(_single, selectable=False, gated=False),
}


def register_variant(name: str, variant: Variant) -> None:
    """Add a variant under `name` (export.variants: [..., <name>]); a name already taken is an error."""
    if name in VARIANTS or name == FP32:
        raise ValueError(f"export variant {name!r} is already registered")
    VARIANTS[name] = variant


def selectable_variants() -> list[str]:
    return [name for name, v in VARIANTS.items() if v.selectable]


def check_variant(name: str, *, fp32: bool = False) -> str:
    """`name`, if params may name it (and fp32 where `fp32`), else a ValueError listing those that are."""
    allowed = [FP32] * fp32 + selectable_variants()
    if name not in allowed:
        raise ValueError(f"unknown export variant {name!r}; expected one of {', '.join(allowed)}")
    return name

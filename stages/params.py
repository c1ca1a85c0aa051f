"""The typed schema of params.yaml: the only source of hyperparameters.

Every section forbids unknown keys, so a typo (`learning_rat`) is an error naming the key
instead of a silently ignored setting. `load_params` turns pydantic's errors into one
`ParamsError` whose message names the file, the dotted key and the value received.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or violates the schema."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- data / ingest


class SplitLimits(Section):
    """Optional stratified cap on the number of images per split, for quick runs."""

    train: int | None = Field(None, gt=0)
    val: int | None = Field(None, gt=0)
    test: int | None = Field(None, gt=0)


class DataParams(Section):
    # keras: keras.datasets.cifar10 download; cifar_python: cifar-10-python.tar.gz on disk;
    # folder: <split>/<class>/*.{png,jpg,jpeg} as a directory or a .tar/.tar.gz/.tgz/.zip.
    source: Literal["keras", "cifar_python", "folder"] = "keras"
    path: str | None = None
    # Expected SHA-256 of the source archive. cifar_python defaults to the published one.
    sha256: str | None = None
    val_fraction: float = Field(0.1, gt=0, lt=1)
    # Only used when the source has no test split of its own.
    test_fraction: float = Field(0.1, gt=0, lt=1)
    limit: SplitLimits = SplitLimits()
    # Grayscale / RGBA / palette images: convert to RGB, or refuse them.
    color_mode: Literal["convert", "refuse"] = "convert"
    # Class-folder images of mixed sizes (most photo datasets): resize each to image_size ×
    # image_size as it is decoded. null keeps the native size, and then every image must share
    # one size. The model resizes again to the backbone's size, so this only sets what is
    # stored: keep it small (a few times the detail the classes need), memory is N × size² × 3 bytes.
    image_size: int | None = Field(None, ge=8, le=1024)
    # center_crop: scale the shorter side to image_size, then cut the middle square (keeps the
    # aspect ratio); stretch: scale both sides to image_size (keeps everything, distorts).
    resize_mode: Literal["center_crop", "stretch"] = "center_crop"

    @model_validator(mode="after")
    def _path_for_local_sources(self) -> DataParams:
        if self.source != "keras" and not self.path:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                "data.val_fraction + data.test_fraction must be < 1, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        return self

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 64 or any(c not in "0123456789abcdef" for c in v.lower())):
            raise ValueError(f"expected a 64-character hex SHA-256, got {v!r}")
        return v.lower() if v else v


class ValidateParams(Section):
    # Largest allowed relative deviation of a class's count from the mean class count.
    class_balance_tolerance: float = Field(0.1, ge=0)
    # Per-image pixel statistics (0..255 scale): a blank or constant image falls outside.
    pixel_mean_min: float = Field(2.0, ge=0, le=255)
    pixel_mean_max: float = Field(253.0, ge=0, le=255)
    pixel_std_min: float = Field(2.0, ge=0)
    # Fraction of images allowed to violate the pixel-statistics expectations.
    pixel_stats_mostly: float = Field(0.999, gt=0, le=1)


# ---------------------------------------------------------------- model / training


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
    # Local mirror of ImageNet no-top weights (file names: stages/backbones.py, e.g.
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

    top_blocks counts the blocks of stages/backbones.py (VGG's block5, ResNet's conv5_block3,
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


class RuntimeParams(Section):
    """How training runs: numerics, compilation and distribution. Exported models stay float32."""

    # mixed_float16 on GPU, mixed_bfloat16 on CPU; the saved models are rebuilt in float32.
    mixed_precision: bool = False
    # Compile the train/eval steps with XLA (jit_compile). Off by default: on CPU it rarely helps.
    xla: bool = False
    # none | mirrored (all local GPUs) | multi_worker (hosts listed in the TF_CONFIG env var).
    strategy: Literal["none", "mirrored", "multi_worker"] = "none"
    # Op determinism: same params, same metrics on CPU. Costs some speed on GPU.
    deterministic: bool = True
    # Seconds between progress lines (with ETA) inside long epochs and feature extraction.
    log_every_seconds: float = Field(30.0, gt=0)


# ---------------------------------------------------------------- evaluate / export / benchmark


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
    # qdq: QuantizeLinear/DequantizeLinear pairs (portable: TensorRT, CUDA, CPU);
    # qoperator: QLinearConv & co. (CPU only).
    format: Literal["qdq", "qoperator"] = "qdq"
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    # Quantize weights to 7 bits: avoids int16 overflow in u8s8 kernels on CPUs without VNNI.
    reduce_range: bool = False


class ExportParams(Section):
    opset: int = Field(17, ge=13, le=21)
    parity: ParityParams = ParityParams()
    variants: list[Literal["fp16", "int8"]] = ["fp16", "int8"]
    int8: Int8Params = Int8Params()
    # A variant may lose at most this much top-1 (in points) against float32, else export fails.
    max_variant_accuracy_drop: float = Field(100.0, ge=0)
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


# ---------------------------------------------------------------- the whole file


class Params(Section):
    seed: int = Field(42, ge=0)
    backbone: str = "mobilenetv2"
    data: DataParams = DataParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    finetune: FinetuneParams = FinetuneParams()
    runtime: RuntimeParams = RuntimeParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    benchmark: BenchmarkParams = BenchmarkParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def validate_params(self) -> ValidateParams:
        return self.validate_


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {e['input']!r}); check the spelling against the schema")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e['input']!r})")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any] | None, source: str = "params") -> Params:
    """Validate a params mapping (as read from YAML) into `Params`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_errors(err, source)) from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, str(path))


def with_overrides(params: Params, **sections: Any) -> Params:
    """A copy of `params` with nested overrides, validated again (used by tests and flows)."""
    raw = params.model_dump(by_alias=True)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = _deep_merge(raw[key], value)
        else:
            raw[key] = value
    return parse_params(raw, "overrides")


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out

"""params.yaml section `benchmark`: onnxruntime throughput and latency against Keras."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from tlpipe.config.base import Section, distinct_providers
from tlpipe.export.contract import ProviderName


class BenchmarkParams(Section):
    section: ClassVar[str] = "benchmark"

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

    _providers = field_validator("providers")(distinct_providers)

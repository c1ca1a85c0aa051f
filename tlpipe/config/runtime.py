"""params.yaml section `runtime`: how the training stages run (tlpipe.runtime)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from tlpipe.config.base import Section


class RuntimeParams(Section):
    """How training runs: numerics, compilation and distribution. Exported models stay float32."""

    section: ClassVar[str] = "runtime"

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

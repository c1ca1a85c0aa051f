"""How training runs: seeds, determinism, numeric precision, XLA and the tf.distribute strategy.

Call `configure(params)` once at the start of a stage, before any model is built: op determinism
and the precision policy are process-wide, and the seed must be set before weights are drawn.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from stages.params import Params, RuntimeParams

# Before TensorFlow is first imported: its C++ start-up chatter is noise in DVC and Prefect logs.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Pin Python, NumPy, TensorFlow and Keras's global seed generator.

    PYTHONHASHSEED cannot be changed from inside a running interpreter; nothing here depends on
    string hashing order, so it is left alone.
    """
    import keras

    random.seed(seed)
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)  # also tf.random.set_seed and Keras's SeedGenerator


@dataclass(frozen=True)
class Runtime:
    """What `configure` decided, for the stages and their reports."""

    strategy: Any  # tf.distribute.Strategy
    policy: str  # keras mixed precision policy name
    jit_compile: bool
    deterministic: bool
    devices: tuple[str, ...]

    @property
    def replicas(self) -> int:
        return int(self.strategy.num_replicas_in_sync)

    def describe(self) -> dict[str, Any]:
        return {
            "strategy": type(self.strategy).__name__,
            "replicas": self.replicas,
            "policy": self.policy,
            "xla": self.jit_compile,
            "deterministic": self.deterministic,
            "devices": list(self.devices),
        }


def configure(params: Params) -> Runtime:
    """Reset Keras, seed, and apply params.runtime. Returns the strategy to build models under."""
    import keras
    import tensorflow as tf

    rt: RuntimeParams = params.runtime
    keras.backend.clear_session()  # fresh layer names and seed state for every run in a process
    if rt.deterministic:
        # Same params, same metrics on CPU; on GPU it makes cuDNN pick deterministic kernels
        # (slower) and raises on ops that have none. tf.data map/interleave stay ordered too.
        tf.config.experimental.enable_op_determinism()
    seed_everything(params.seed)
    gpus = tf.config.list_logical_devices("GPU")
    policy = "float32"
    if rt.mixed_precision:
        # float16 needs loss scaling and only pays on GPUs with tensor cores; recent CPUs
        # (AVX512-BF16, AMX) have bfloat16 units and bfloat16 needs no loss scaling.
        policy = "mixed_float16" if gpus else "mixed_bfloat16"
    keras.mixed_precision.set_global_policy(policy)
    strategy = make_strategy(rt.strategy)
    devices = tuple(d.name for d in (gpus or tf.config.list_logical_devices("CPU")))
    runtime = Runtime(strategy, policy, rt.xla, rt.deterministic, devices)
    log.info(
        "runtime: %s on %d replica(s) (%s), policy %s, xla %s, deterministic %s",
        type(strategy).__name__, runtime.replicas, ", ".join(devices), policy, rt.xla, rt.deterministic,
    )  # fmt: skip
    return runtime


_STRATEGIES: dict[str, Any] = {}


def make_strategy(kind: str) -> Any:
    """none: the default strategy; mirrored: all local GPUs (or all logical CPUs when there is none);
    multi_worker: the cluster in TF_CONFIG (a single local worker when TF_CONFIG is unset).

    One strategy per kind and process: a second MirroredStrategy in the same process (two stages
    run in-process one after the other) reuses collective instance keys and its all-reduces fail
    with "Shape mismatch in the collective instance".
    """
    if kind not in _STRATEGIES:
        _STRATEGIES[kind] = _new_strategy(kind)
    return _STRATEGIES[kind]


def _new_strategy(kind: str) -> Any:
    import tensorflow as tf

    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if kind == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            log.warning("runtime.strategy=multi_worker without TF_CONFIG: running as a single worker")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"runtime.strategy={kind!r}: expected none, mirrored or multi_worker")


def float32_policy() -> Any:
    """Context in which models are rebuilt for saving: exported models are always float32."""
    import keras

    class _Scope:
        def __enter__(self) -> None:
            self.prev = keras.mixed_precision.global_policy().name
            keras.mixed_precision.set_global_policy("float32")

        def __exit__(self, *exc: object) -> None:
            keras.mixed_precision.set_global_policy(self.prev)

    return _Scope()


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

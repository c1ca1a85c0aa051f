"""How training runs: seeds, determinism, numeric precision, XLA and the tf.distribute strategy.

Call `configure(params)` once at the start of a stage, before any model is built: op determinism
and the precision policy are process-wide, and the seed must be set before weights are drawn.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tlpipe.config.params import Params


log = logging.getLogger(__spec__.name)


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

    def settings(self) -> dict[str, Any]:
        """What decides the numbers a run produces (config.json)."""
        return {
            "strategy": type(self.strategy).__name__,
            "policy": self.policy,
            "xla": self.jit_compile,
            "deterministic": self.deterministic,
        }

    def machine(self) -> dict[str, Any]:
        """Where it ran (timings.json: this changes with the machine, not with the inputs)."""
        return {"replicas": self.replicas, "devices": list(self.devices)}


# bfloat16 tensor cores arrived with Ampere (compute capability 8.0): A100, RTX 30xx, L4, H100.
BF16_COMPUTE_CAPABILITY = (8, 0)


@dataclass(frozen=True)
class Resolved:
    """The runtime settings a run really gets, and why any differs from what params asked."""

    policy: str
    jit_compile: bool
    notes: tuple[str, ...]


def resolve(
    *,
    mixed_precision: bool,
    xla: bool,
    strategy: str,
    deterministic: bool,
    gpus: Sequence[tuple[int, int] | None],
    replicas: int,
) -> Resolved:
    """Precision policy and XLA for a machine whose GPUs have compute capabilities `gpus`
    (None: unknown; empty: no GPU) and a strategy of `replicas` replicas. A pure function, so
    that what a GPU machine would get is testable on a machine without one.

    - Mixed precision is bfloat16 on CPU and on GPUs of compute capability >= 8.0: bfloat16 has
      float32's range and needs no loss scaling. float16 (with Keras's LossScaleOptimizer) only
      for one replica on older GPUs: Keras 3's LossScaleOptimizer checks each replica's gradients
      for inf/NaN before the cross-replica sum and acts on the first replica's answer
      (keras/src/optimizers/loss_scale_optimizer.py, `_tf_apply`), so an overflow on another
      replica is summed into every update. Several older GPUs therefore train in float32.
    - XLA only without a tf.distribute strategy: XLA + MirroredStrategy fails in Keras 3
      (keras-team/keras#21366 with mixed_float16, #18145, tensorflow/tensorflow#56423) and Keras's
      own `jit_compile="auto"` turns XLA off under any strategy. Not with op determinism either:
      Keras would turn it off itself, silently (model_supports_jit), and config.json would lie.
    """
    notes: list[str] = []
    policy = "float32"
    if mixed_precision:
        # Recent CPUs (AVX512-BF16, AMX) have bfloat16 units too.
        if all(cc is not None and cc >= BF16_COMPUTE_CAPABILITY for cc in gpus):  # True without GPUs
            policy = "mixed_bfloat16"
        elif replicas == 1:
            policy = "mixed_float16"
        else:
            notes.append(
                f"runtime.mixed_precision: float32 instead: GPU compute capabilities "
                f"{', '.join('?' if cc is None else f'{cc[0]}.{cc[1]}' for cc in gpus)} lack bfloat16 "
                f"(needs >= 8.0), and float16 loss scaling across {replicas} replicas can apply an overflow"
            )
    if xla and strategy != "none":
        notes.append(f"runtime.xla: off: XLA with runtime.strategy={strategy} fails in Keras (keras#21366, #18145)")
    elif xla and deterministic:
        notes.append("runtime.xla: off: Keras turns XLA off under op determinism (runtime.deterministic: true)")
    return Resolved(policy, xla and strategy == "none" and not deterministic, tuple(notes))


def gpu_compute_capabilities() -> list[tuple[int, int] | None]:
    """The compute capability of each visible GPU (None where TensorFlow does not report it)."""
    import tensorflow as tf

    out: list[tuple[int, int] | None] = []
    for gpu in tf.config.list_physical_devices("GPU"):
        cc = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        out.append(tuple(cc) if cc else None)  # type: ignore[arg-type]
    return out


def configure(params: Params) -> Runtime:
    """Reset Keras, seed, and apply params.runtime. Returns the strategy to build models under."""
    import keras
    import tensorflow as tf

    rt = params.runtime
    mixed_precision, xla, strategy_kind, deterministic = rt.mixed_precision, rt.xla, rt.strategy, rt.deterministic
    # First: a multi-worker strategy configures TF's collective ops, which must happen before
    # anything (listing devices, clearing the session) starts TF's runtime.
    strategy = make_strategy(strategy_kind)
    keras.backend.clear_session()  # fresh layer names and seed state for every run in a process
    if deterministic:
        # Same params, same metrics on CPU; on GPU it makes cuDNN pick deterministic kernels
        # (slower) and raises on ops that have none. tf.data map/interleave stay ordered too.
        tf.config.experimental.enable_op_determinism()
    seed_everything(params.seed)
    gpus = tf.config.list_logical_devices("GPU")
    gpu_settings = [
        name
        for name, on in (
            ("runtime.mixed_precision", mixed_precision),
            ("runtime.xla", xla),
            ("runtime.strategy=mirrored", strategy_kind == "mirrored"),
        )
        if on
    ]
    if gpu_settings and not gpus:
        log.warning(
            "no GPU found: %s are GPU settings; running on CPU%s",
            ", ".join(gpu_settings),
            " (mixed precision as bfloat16)" if mixed_precision else "",
        )
    resolved = resolve(
        mixed_precision=mixed_precision,
        xla=xla,
        strategy=strategy_kind,
        deterministic=deterministic,
        gpus=gpu_compute_capabilities() if gpus else [],
        replicas=int(strategy.num_replicas_in_sync),
    )
    for note in resolved.notes:
        log.warning("%s", note)
    policy = resolved.policy
    keras.mixed_precision.set_global_policy(policy)
    devices = tuple(d.name for d in (gpus or tf.config.list_logical_devices("CPU")))
    runtime = Runtime(strategy, policy, resolved.jit_compile, deterministic, devices)
    log.info(
        "runtime: %s on %d replica(s) (%s), policy %s, xla %s, deterministic %s",
        type(strategy).__name__,
        runtime.replicas,
        ", ".join(devices),
        policy,
        resolved.jit_compile,
        deterministic,
    )
    return runtime


_STRATEGIES: dict[str, Any] = {}


def make_strategy(kind: str) -> Any:
    """none: the default strategy; mirrored: all local GPUs (or all logical CPUs when there is none);
    multi_worker: the cluster in TF_CONFIG (a single local worker when TF_CONFIG is unset), each
    worker with its local devices.

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
        # Keras 3's fit cannot train across workers (keras-team/keras#20585); the stages' own
        # distributed step can (tlpipe.training.step). A collective op that waits longer than the
        # timeout for a peer (a worker lost mid-run) fails instead of hanging the cluster.
        options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=collective_timeout())
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    raise ValueError(f"runtime.strategy={kind!r}: expected none, mirrored or multi_worker")


# How long a collective op (a gradient all-reduce) waits for the other workers before the step
# fails: longer than anything one worker does alone between two steps (the chief's backups and
# validation), short enough that a lost worker stops the job. TLPIPE_COLLECTIVE_TIMEOUT overrides.
COLLECTIVE_TIMEOUT_SECONDS = 600.0


def collective_timeout() -> float:
    raw = os.environ.get("TLPIPE_COLLECTIVE_TIMEOUT")
    try:
        return float(raw) if raw else COLLECTIVE_TIMEOUT_SECONDS
    except ValueError:
        raise ValueError(f"TLPIPE_COLLECTIVE_TIMEOUT={raw!r}: expected seconds") from None


def cluster_size() -> int:
    """How many tasks the TF_CONFIG cluster has (1 without TF_CONFIG)."""
    cluster = _tf_config().get("cluster") or {}
    return max(1, sum(len(tasks) for tasks in cluster.values()))


def _tf_config() -> dict[str, Any]:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return {}
    try:
        return dict(json.loads(raw))
    except ValueError:
        raise ValueError(f"TF_CONFIG is not valid JSON: {raw[:200]!r}") from None


def is_chief() -> bool:
    """Whether this process writes the outputs: always, except a non-chief worker of a TF_CONFIG
    cluster (the chief is the `chief` task, or worker 0 when the cluster has no chief)."""
    config = _tf_config()
    if not config:
        return True
    task = config.get("task") or {}
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in (config.get("cluster") or {})


def task_name() -> str:
    """This process's task as TensorFlow names it in errors: /job:<type>/replica:0/task:<index>."""
    task = _tf_config().get("task") or {}
    return f"/job:{task.get('type', 'worker')}/replica:0/task:{int(task.get('index', 0))}"


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


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

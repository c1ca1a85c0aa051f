"""The Keras model (with the shipped model's test-time augmentation) timed in a spawned child
process, one request at a time.

TensorFlow then neither shares threads with onnxruntime nor grabs the GPU memory first, and its
CUDA 12 libraries never meet onnxruntime's CUDA 13 ones in one process.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from typing import Any

from tlpipe.bench.timing import random_pixels, time_calls
from tlpipe.model.tta import with_tta
from tlpipe.util.errors import ModelError


def _keras_worker(conn: Any, model_path: str, image_shape: tuple[int, ...], threads: int, tta: str) -> None:
    """Child process: load the Keras model, then time batches on request until told to stop.

    Requests are (batch_size, warmup, iterations, duration_s); answers are lists of seconds, or
    ("error", message). tf.function is how a model is served from TensorFlow; predict() would add
    per-call overhead that is not the model's.
    """
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf

        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:  # take GPU memory as needed instead of all of it at start
            tf.config.experimental.set_memory_growth(gpu, True)
        model = with_tta(keras.models.load_model(model_path, compile=False), tta)
        if tuple(model.inputs[0].shape[1:]) != tuple(image_shape):
            raise ModelError(
                f"{model_path}: input shape {tuple(model.inputs[0].shape)} differs from the ONNX model's {image_shape}"
            )
        forward = tf.function(lambda x: model(x, training=False))
        device = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "CPU"
        conn.send({"device": device, "tensorflow": tf.__version__, "keras": keras.__version__})
        inputs: dict[int, Any] = {}
        while (request := conn.recv()) is not None:
            b, warmup, iterations, duration_s = request
            if b not in inputs:
                inputs[b] = tf.constant(random_pixels(b, image_shape, seed=0).astype(model.inputs[0].dtype))
            conn.send(time_calls(lambda x=inputs[b]: forward(x).numpy(), warmup, iterations, duration_s))
    except Exception as err:  # noqa: BLE001 - sent back whole: the parent raises it with the child's message
        conn.send(("error", f"{type(err).__name__}: {err}"))


class KerasBaseline:
    """The Keras model (with the shipped model's test-time augmentation) timed in a spawned child
    process, one request at a time."""

    def __init__(self, model_path: Path, image_shape: tuple[int, ...], threads: int, tta: str = "none") -> None:
        if not model_path.is_file():
            raise ModelError(f"{model_path}: Keras model not found (benchmark.keras_baseline is on)")
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_keras_worker, args=(child, str(model_path), image_shape, threads, tta), daemon=True
        )
        self._proc.start()
        self.info = self._answer()

    def _answer(self) -> Any:
        answer = self._conn.recv()
        if isinstance(answer, tuple) and answer and answer[0] == "error":
            self.close()
            raise ModelError(f"Keras baseline: {answer[1]}")
        return answer

    def time(self, batch_size: int, warmup: int, iterations: int, duration_s: float | None) -> list[float]:
        self._conn.send((batch_size, warmup, iterations, duration_s))
        return self._answer()

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._conn.send(None)
            except OSError:
                pass
            self._proc.join(timeout=30)
            if self._proc.is_alive():
                self._proc.terminate()

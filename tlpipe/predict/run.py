"""Batch prediction: the exported ONNX model on unlabeled images (stages.predict is its command line).

Images are prepared exactly as the training images were: decoded by the code ingest uses
(tlpipe.data.images, RGB conversion included) and, when ingest resized them (data.image_size), resized
the same way, as the model's metadata records (`resized_to`); the model does the rest inside
(resize to the backbone's size, preprocess_input). Decoding runs on helper threads while
onnxruntime runs the previous batch, on the first provider of `predict.providers` that loads.
Memory stays flat whatever the number of images (tlpipe.predict.inputs).

An unreadable image (corrupt, truncated, a lying header, an animation) gets its row with the
error and is counted in the summary; `predict.on_error: fail` makes it fatal instead, and then
nothing is written. Outputs: the CSV (tlpipe.predict.outputs) and `<output>.summary.json`.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from tlpipe.config.params import Params
from tlpipe.export.onnx_model import OnnxModel, open_model
from tlpipe.paths import Paths
from tlpipe.predict.inputs import batches, image_decoder, open_inputs, prefetch
from tlpipe.predict.outputs import SubmissionWriter, TableWriter, probabilities_path, summary_path
from tlpipe.util.atomic import atomic_file, write_json
from tlpipe.util.durations import format_seconds
from tlpipe.util.errors import DataError, ModelError

log = logging.getLogger(__spec__.name)
MAX_ERRORS_LISTED = 100  # in the summary; every one is on its row of a table


def model_contract(model: OnnxModel) -> tuple[list[str], tuple[int, int], list | None]:
    """Class names, input height and width, and ingest's resize (or None), from the model itself."""
    shape = list(model.input.shape)
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]) or shape[3] != 3:
        raise ModelError(f"{model.path}: input shape {shape}; expected [batch, height, width, 3] (NHWC RGB)")
    outputs = model.session.get_outputs()[0].shape[-1]
    meta = model.session.get_modelmeta().custom_metadata_map
    classes = json.loads(meta["classes"]) if "classes" in meta else [str(i) for i in range(int(outputs))]
    if isinstance(outputs, int) and len(classes) != outputs:
        raise ModelError(f"{model.path}: {outputs} outputs but {len(classes)} class names in its metadata")
    return classes, (shape[1], shape[2]), json.loads(meta.get("resized_to", "null"))


class Progress:
    """A log line every `every` seconds: images done, rate, and the ETA when the total is known."""

    def __init__(self, total: int | None, every: float) -> None:
        self.total, self.every, self.done = total, every, 0
        self.start = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self.last < self.every:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        if self.total:
            eta = (self.total - self.done) / max(rate, 1e-9)
            done, total = f"{self.done:,}", f"{self.total:,}"
            log.info("predict: %s/%s images, %.0f images/s, ETA %s", done, total, rate, format_seconds(eta))
        else:
            log.info("predict: %s images, %.0f images/s", f"{self.done:,}", rate)


def predict(
    source: str,
    output: str | Path,
    params: Params,
    paths: Paths | None = None,
    *,
    model: str | Path | None = None,
    folder: str | None = None,
) -> dict[str, Any]:
    """Predict every image of `source` into `output`; returns the summary (also written beside it)."""
    p = params.predict
    paths = paths or Paths()
    start = time.perf_counter()
    model_path = Path(model) if model else paths.onnx_variant(p.variant)
    onnx = open_model(
        model_path, p.providers, allow_fallback=p.allow_fallback, threads=p.threads, max_batch=p.batch_size
    )
    if onnx.provider != p.providers[0]:
        # Allowed (predict.allow_fallback), but never silent: a GPU machine running on CPU is
        # usually a CUDA library or driver mismatch (README: GPU install).
        log.warning("predict: running on %s, not %s (the first of predict.providers)", onnx.provider, p.providers[0])
    classes, shape, resized_to = model_contract(onnx)
    inputs = open_inputs(source, folder)
    decode = image_decoder(shape, resized_to, p.resize_mode)
    output = Path(output)
    counts = {"images": 0, "predicted": 0, "unreadable": 0, "resized": 0}
    errors: list[dict[str, str]] = []
    with ExitStack() as stack:
        out = stack.enter_context(open(stack.enter_context(atomic_file(output)), "w", newline=""))
        if p.format == "submission":
            probs_out = None
            if p.probabilities:
                probs_tmp = stack.enter_context(atomic_file(probabilities_path(output)))
                probs_out = stack.enter_context(open(probs_tmp, "w", newline=""))
            writer: TableWriter | SubmissionWriter = SubmissionWriter(out, classes, probs_out)
        else:
            writer = TableWriter(out, classes, p.top_k, p.probabilities)
        progress = Progress(inputs.total, p.log_every_seconds)
        decoded = batches(inputs.items, decode, shape, p.batch_size, p.decode_threads)
        for batch in prefetch(decoded, p.queue_batches):
            if batch.errors and p.on_error == "fail":
                i, why = next(iter(batch.errors.items()))
                raise DataError(f"{batch.names[i]}: {why} (predict.on_error is 'fail'; nothing was written)")
            probs = onnx.predict(batch.pixels, len(batch.pixels)) if len(batch.pixels) else np.zeros((0, len(classes)))
            writer.write(batch, probs)
            counts["images"] += len(batch.names)
            counts["predicted"] += len(batch.pixels)
            counts["unreadable"] += len(batch.errors)
            counts["resized"] += batch.resized
            room = MAX_ERRORS_LISTED - len(errors)
            errors += [{"file": batch.names[i], "error": why} for i, why in list(batch.errors.items())[:room]]
            progress.update(len(batch.names))
        writer.close()
    seconds = time.perf_counter() - start
    summary = {
        "output": str(output),
        "format": p.format,
        "model": str(model_path),
        "provider": onnx.provider,
        "providers_requested": onnx.requested,
        "resized_to": resized_to,
        **counts,
        "seconds": round(seconds, 2),
        "images_per_second": round(counts["images"] / seconds, 1) if seconds > 0 else None,
        "errors": errors,
    }
    write_json(summary_path(output), summary)
    log.info(
        "predict: %s images (%s unreadable%s) in %.1f s on %s -> %s",
        f"{counts['images']:,}",
        counts["unreadable"],
        f", {counts['resized']} resized to {shape[1]}x{shape[0]}" if counts["resized"] else "",
        seconds,
        onnx.provider,
        output,
    )
    for e in errors[:5]:
        log.warning("unreadable: %s: %s", e["file"], e["error"])
    if not counts["images"]:
        log.warning("predict: no images in %s", source)
    return summary

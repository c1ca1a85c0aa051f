"""export stage: models/model.keras -> models/model.onnx (+ fp16 / int8 variants), verified.

- Conversion (tlpipe.export.convert): tf2onnx, then the pipeline's interface (uint8 `pixels` in,
  `probabilities` out, dynamic batch, class names in the metadata).
- Parity: Keras and onnxruntime (CPU) on a seeded sample of test images; past the limits in
  `export.parity` the stage fails and writes nothing.
- Variants (`export.variants`, tlpipe.export.quantize): fp16 (weights and compute in float16, float32
  interface) and int8 (static quantization, calibrated on train images), each scored on the test
  split against float32; a drop past `export.max_variant_accuracy_drop` points fails the stage
  and writes nothing.
- Test-time augmentation (`tta`, tlpipe.model.tta) is inside the exported model, and said in its
  metadata with the backbone's input size; with TTA on, the single-view model is exported as
  the variant `single` (scored, not gated), so the benchmark shows what TTA costs.

Outputs: models/model.onnx, models/variants/model.<variant>.onnx, reports/export/metrics.json
(parity and variant scores) and reports/export/timings.json.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from stages.cli import run_stage
from tlpipe.config.export import ExportParams, ParityParams
from tlpipe.data.dataset import load_info, split_records
from tlpipe.export.contract import CPU
from tlpipe.export.convert import convert
from tlpipe.export.onnx_model import open_model
from tlpipe.export.variants import VARIANTS, Job
from tlpipe.model.keras_io import keras_predict, load_keras_model
from tlpipe.model.tta import with_tta
from tlpipe.paths import Paths
from tlpipe.util.atomic import atomic_dir, atomic_file, write_json
from tlpipe.util.errors import ModelError

if TYPE_CHECKING:
    from tlpipe.config.params import Params

log = logging.getLogger(__spec__.name)


class ParityError(ModelError):
    """The ONNX model does not compute what the Keras model computes."""


class VariantError(ModelError):
    """A reduced-precision variant loses more accuracy than params allow."""


def variant_path(paths: Paths, variant: str) -> Path:
    """Where an export variant lives: fp32 is models/model.onnx itself."""
    return paths.onnx_variant(variant)


def compare(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max absolute probability difference and top-1 agreement of two N×C probability arrays."""
    if reference.shape != candidate.shape:
        raise ModelError(f"outputs differ in shape: {reference.shape} vs {candidate.shape}")
    return {
        "max_abs_diff": float(np.abs(reference - candidate).max()) if reference.size else 0.0,
        "top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()) if len(reference) else 1.0,
    }


def check_parity(keras_probs: np.ndarray, onnx_probs: np.ndarray, limits: ParityParams) -> dict[str, Any]:
    """Parity figures; a `ParityError` naming both figures and limits if either is out of bounds."""
    max_abs_diff, min_agreement = limits.max_abs_diff, limits.min_top1_agreement
    result = {"images": len(keras_probs), **compare(keras_probs, onnx_probs)}
    passed = result["max_abs_diff"] <= max_abs_diff and result["top1_agreement"] >= min_agreement
    result.update(passed=passed, max_abs_diff_limit=max_abs_diff, min_top1_agreement=min_agreement)
    if not passed:
        raise ParityError(
            f"Keras/ONNX parity failed on {result['images']} test images: max |Δprob| {result['max_abs_diff']:.3g} "
            f"(limit {max_abs_diff:g}), top-1 agreement {result['top1_agreement']:.4f} "
            f"(limit {min_agreement:g}); nothing was written"
        )
    return result


def score(reference: np.ndarray, probs: np.ndarray, labels: np.ndarray, path: Path) -> dict[str, float]:
    """Accuracy of one variant and how far it is from the float32 ONNX model."""
    accuracy = float((probs.argmax(1) == labels).mean()) if len(labels) else 0.0
    ref_accuracy = float((reference.argmax(1) == labels).mean()) if len(labels) else 0.0
    return {
        "accuracy": accuracy,
        "accuracy_drop_points": round(100 * (ref_accuracy - accuracy), 4),
        **compare(reference, probs),
        "size_mb": round(path.stat().st_size / 2**20, 3),
    }


def inside(model: Any, tta: str, info: Any) -> dict[str, str]:
    """What the exported model does inside, for its metadata: TTA and the backbone's input size;
    and what ingest did before it (`resized_to`: [size, size, resize_mode] or null), so that
    stages.predict prepares new images exactly as the training images were."""
    resize = next((layer for layer in model.layers if type(layer).__name__ == "Resizing"), None)
    size = f"{resize.height}x{resize.width}" if resize is not None else "x".join(map(str, info.image_shape[:2]))
    return {"tta": tta, "backbone_input_size": size, "resized_to": json.dumps(info.source.get("resized_to"))}


def run(params: Params, paths: Paths) -> dict[str, Any]:
    p = params.export
    opset, batch_size, variants, max_drop = p.opset, p.batch_size, list(p.variants), p.max_variant_accuracy_drop
    tta = params.tta
    info = load_info(paths.prepared)
    test = split_records(paths.prepared, "test", info)
    single = load_keras_model(paths.model, info)
    model = with_tta(single, tta)
    metadata = inside(single, tta, info)
    n_eval = test.count if p.eval_images is None else min(p.eval_images, test.count)
    # Seeded samples, not the first images. The parity sample is held (a few hundred images); the
    # evaluation sample is streamed from the shards for each model scored on it.
    order = np.random.default_rng(params.seed).permutation(test.count)
    eval_idx = np.sort(order[:n_eval])
    x_parity, _ = test.gather(np.sort(order[: p.parity.images]))
    y_eval = test.gather_labels(eval_idx)

    def predict_eval(runner: Any) -> np.ndarray:
        return np.concatenate(
            [runner.predict(x, batch_size) for x in test.sample_batches(eval_idx, max(batch_size, 256))]
            or [np.zeros((0, info.num_classes), np.float32)]
        )

    timings: dict[str, float] = {}

    paths.models.mkdir(parents=True, exist_ok=True)
    # Everything is built and checked in a scratch directory beside the outputs, then moved.
    with tempfile.TemporaryDirectory(prefix=".export-", dir=paths.models) as scratch_dir:
        scratch = Path(scratch_dir)
        fp32_path = scratch / "model.onnx"
        t0 = time.perf_counter()
        import onnx

        onnx.save(convert(model, opset, info, metadata), str(fp32_path))
        timings["convert_s"] = round(time.perf_counter() - t0, 2)
        fp32 = open_model(fp32_path, [CPU], info=info)

        keras_probs = keras_predict(model, x_parity, batch_size)
        parity = check_parity(keras_probs, fp32.predict(x_parity, batch_size), p.parity)
        log.info("parity ok: %s", parity)

        reference = predict_eval(fp32)
        scores: dict[str, dict[str, float]] = {"fp32": score(reference, reference, y_eval, fp32_path)}
        # With TTA the single-view model is a variant too: the benchmark then shows what TTA costs.
        built = [*variants, *(["single"] if tta != "none" else [])]
        job = Job(fp32_path=fp32_path, single=single, metadata=metadata, info=info, params=params, paths=paths)
        for variant in built:
            out = scratch / paths.onnx_variant(variant).name
            t0 = time.perf_counter()
            VARIANTS[variant].build(job, out)
            timings[f"{variant}_build_s"] = round(time.perf_counter() - t0, 2)
            probs = predict_eval(open_model(out, [CPU], info=info))
            scores[variant] = score(reference, probs, y_eval, out)
            drop = scores[variant]["accuracy_drop_points"]
            log.info("%s: %s", variant, scores[variant])
            if drop > max_drop and VARIANTS[variant].gated:
                raise VariantError(
                    f"{variant} variant loses {drop:.2f} points of top-1 against float32 on {n_eval} test images "
                    f"(accuracy {scores[variant]['accuracy']:.4f} against {scores['fp32']['accuracy']:.4f}; "
                    f"limit export.max_variant_accuracy_drop = {max_drop:g}); nothing was written"
                )

        metrics = {"opset": opset, "inside": metadata, "parity": parity, "eval_images": n_eval, "variants": scores}
        # All checks passed: move the models into place, each file whole.
        with atomic_file(paths.onnx_model) as tmp:
            fp32_path.replace(tmp)
        with atomic_dir(paths.variants) as tmp:
            for variant in built:
                name = paths.onnx_variant(variant).name
                (scratch / name).replace(tmp / name)
    with atomic_dir(paths.reports("export")) as tmp:
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "timings.json", timings)
    return metrics


def main() -> None:
    run_stage(run, ExportParams)


if __name__ == "__main__":
    main()

"""benchmark stage: onnxruntime throughput and latency per model and batch size, against Keras.

Every ONNX model the export stage wrote (models/model.onnx and models/variants/*.onnx) runs on
the first usable provider of `benchmark.providers`; the provider the session really runs on is
read back and recorded (onnxruntime falls back to CPU with only a log line). The same Keras model
is timed in the same run, in a child process (tlpipe.bench.keras_baseline). Timing: tlpipe.bench.timing;
reports: tlpipe.bench.report.

Timing depends on the machine and its load: this is the one stage whose outputs change from run
to run. DVC reruns it only when the models, the params or this code change; re-measure on
purpose with `dvc repro -f -s benchmark` (-s: this stage alone, not everything upstream).

Writes reports/benchmark/: results.json (machine, settings, every measurement), results.md
(the table), throughput.png, metrics.json (headline numbers for `dvc metrics show`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.cli import run_stage
from tlpipe.bench.keras_baseline import KerasBaseline
from tlpipe.bench.report import headline, machine_facts, markdown_table, plot
from tlpipe.bench.timing import KERAS, measure_interleaved, summarise
from tlpipe.config.benchmark import BenchmarkParams
from tlpipe.export.onnx_model import OnnxModel, open_model
from tlpipe.paths import Paths
from tlpipe.util.atomic import atomic_dir, write_json
from tlpipe.util.errors import ModelError

if TYPE_CHECKING:
    from tlpipe.config.params import Params


def onnx_models(paths: Paths) -> dict[str, Path]:
    """onnx-fp32 plus one entry per variant file the export stage wrote."""
    if not paths.onnx_model.is_file():
        raise ModelError(f"{paths.onnx_model}: ONNX model not found; run the export stage first (dvc repro export)")
    found = {"onnx-fp32": paths.onnx_model}
    for name, f in paths.variant_files().items():
        found[f"onnx-{name}"] = f
    return found


def check_same_image_input(models: dict[str, OnnxModel]) -> tuple[int, ...]:
    """All models take [dynamic batch, H, W, 3] of one size; that image shape."""
    shapes = {}
    for name, model in models.items():
        shape = list(model.input.shape)
        if len(shape) != 4 or shape[-1] != 3 or not all(isinstance(d, int) and d > 0 for d in shape[1:]):
            raise ModelError(f"{model.path}: input {model.input.name!r} has shape {shape}; expected [batch, H, W, 3]")
        if isinstance(shape[0], int) and shape[0] > 0:
            raise ModelError(f"{model.path}: input has a fixed batch size {shape[0]}; export with a dynamic batch")
        shapes[name] = tuple(shape[1:])
    if len(set(shapes.values())) != 1:
        raise ModelError(f"the ONNX models take different image shapes: {shapes}")
    return next(iter(shapes.values()))


def run(params: Params, paths: Paths) -> dict[str, Any]:
    p = params.benchmark
    onnx = {
        name: open_model(
            path,
            p.providers,
            allow_fallback=p.allow_fallback,
            threads=p.threads,
            graph_optimization=p.graph_optimization,
            max_batch=max(p.batch_sizes),
        )
        for name, path in onnx_models(paths).items()
    }
    image_shape = check_same_image_input(onnx)
    # The Keras baseline does what the exported model does inside (its metadata says), so that the
    # speedup compares like with like.
    tta = onnx["onnx-fp32"].session.get_modelmeta().custom_metadata_map.get("tta", "none")
    keras = KerasBaseline(paths.model, image_shape, p.threads, tta=tta) if p.keras_baseline else None
    try:
        times = measure_interleaved(onnx, keras, image_shape, p)
    finally:
        if keras is not None:
            keras.close()

    results: dict[str, Any] = {}
    if keras is not None:
        results[KERAS] = {"path": str(paths.model), "provider": f"tensorflow ({keras.info['device']})", "rows": []}
    for name, model in onnx.items():
        results[name] = {"path": str(model.path), "provider": model.provider, "requested": model.requested, "rows": []}
    for (name, b), t in times.items():
        results[name]["rows"].append(summarise(t, b))
    machine = machine_facts()
    metrics = headline(results, p.batch_sizes)
    with atomic_dir(paths.reports("benchmark")) as out:
        settings = p.model_dump()
        write_json(
            out / "results.json",
            {"machine": machine, "settings": settings, "image_shape": image_shape, "models": results},
        )
        (out / "results.md").write_text(markdown_table(results, machine))
        plot(results, out / "throughput.png")
        write_json(out / "metrics.json", metrics)
    return metrics


def main() -> None:
    run_stage(run, BenchmarkParams)


if __name__ == "__main__":
    main()

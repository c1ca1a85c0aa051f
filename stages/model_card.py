"""model_card stage: one Markdown page on what the model is, how good and how fast, and where from.

Reads what the earlier stages wrote (dataset.json, the models, the evaluate / export / benchmark
reports) and params.yaml; writes reports/model_card/model_card.md. A missing report reads "not
measured" rather than failing, so the card can be made at any point of the pipeline. Its lineage
names the models by their md5, the hash dvc.lock records for them, and the data by its content
fingerprints: the card is a function of what it describes. It quotes the benchmark, so it
changes whenever the benchmark is re-measured.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.cli import run_stage
from tlpipe.config.data import DataParams
from tlpipe.config.finetune import FinetuneParams
from tlpipe.config.model import ModelParams
from tlpipe.config.train import TrainParams
from tlpipe.data.dataset import load_info
from tlpipe.data.raw import pinned_sha256
from tlpipe.model.backbones import get_backbone, resolve_image_size
from tlpipe.paths import Paths
from tlpipe.util.atomic import atomic_dir
from tlpipe.util.hashing import md5_file

INTENDED_USE = (
    "Classifying small RGB photographs into the classes listed below, as a baseline and a worked example "
    "of a reproducible transfer-learning pipeline. Inputs are uint8 RGB images, NHWC, at the training "
    "data's native size; the model resizes and normalises them itself."
)

if TYPE_CHECKING:
    from tlpipe.config.params import Params
LIMITS = [
    "Trained and tested on one data source only (see Data): accuracy on other cameras, resolutions or "
    "class definitions is unknown.",
    "The test split is carved from the same source as the training data; it measures in-distribution accuracy.",
    "Probabilities are only as calibrated as the expected calibration error says; do not read them as "
    "risks without recalibration.",
    "Not for decisions about people, safety-critical use, or inputs outside the listed classes: the "
    "softmax always names one of the known classes, even for an image of something else.",
    "Reduced-precision variants are scored on the test split only; re-check them on your own data.",
]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def lineage(paths: Paths) -> dict[str, str]:
    """md5 of each model file the card describes (what dvc.lock records for them)."""
    files = [paths.model, paths.onnx_model, *sorted(paths.variants.glob("*.onnx"))]
    return {str(f.relative_to(paths.root)): md5_file(f) for f in files if f.is_file()}


def _pct(x: float | None) -> str:
    return "not measured" if x is None else f"{100 * x:.2f} %"


def render(params: Params, paths: Paths) -> str:
    info = load_info(paths.prepared)
    evaluate = _read_json(paths.reports("evaluate") / "metrics.json") or {}
    export = _read_json(paths.reports("export") / "metrics.json") or {}
    bench = _read_json(paths.reports("benchmark") / "metrics.json") or {}
    bench_results = _read_json(paths.reports("benchmark") / "results.json") or {}
    lin = lineage(paths)
    m = params.model
    # The size the model really resizes to (image_size, or the backbone default × image_scale).
    size = f"{resolve_image_size(get_backbone(params.backbone), m.image_size, m.image_scale)} px"

    lines = [f"# Model card: {params.backbone} on {info.source.get('path') or info.source.get('kind', 'data')}", ""]
    lines += ["## Intended use", "", INTENDED_USE, ""]

    lines += ["## Data", ""]
    lines += [f"- Source: `{json.dumps(info.source, sort_keys=True)}`"]
    if pinned := pinned_sha256(params.data):
        lines += [f"- Source archive SHA-256 (checked at ingest): `{pinned}`"]
    lines += [
        f"- Classes ({info.num_classes}): {', '.join(info.classes)}",
        f"- Image shape: {tuple(info.image_shape)} uint8 RGB",
    ]
    lines += ["", "| split | images | content hash (sha256 of pixels + labels) |", "|---|---:|---|"]
    for split, n in info.counts.items():
        lines.append(f"| {split} | {n} | `{info.fingerprints.get(split, '')[:16]}…` |")
    lines.append("")

    unfreeze = {k: v for k, v in params.finetune.unfreeze.model_dump().items() if v is not None}
    lines += ["## Model", ""]
    lines += [
        f"- Backbone: `{params.backbone}` (weights: `{m.weights}`, "
        f"alpha: {m.alpha or 'default'}), images resized inside "
        f"the model to {size} ({m.interpolation}), pooling {m.pooling}, dropout {m.dropout}, "
        f"head units {m.head_units or 'none'}",
        f"- Head training: {params.train.epochs} epochs, {params.train.optimizer} lr {params.train.learning_rate}, "
        f"batch {params.train.batch_size}",
        f"- Fine-tuning: {'on' if params.finetune.enabled else 'off'}, {params.finetune.epochs} epochs, "
        f"{params.finetune.optimizer} lr {params.finetune.learning_rate}, unfreeze {unfreeze}",
        f"- Test-time augmentation inside the shipped model: {params.tta}",
        f"- Seed: {params.seed}",
        "",
    ]

    lines += ["## Metrics (test split)", ""]
    if evaluate:
        lines += [
            "| metric | value |",
            "|---|---:|",
            f"| images | {evaluate.get('images')} |",
            f"| top-1 accuracy | {_pct(evaluate.get('accuracy'))} |",
            f"| top-5 accuracy | {_pct(evaluate.get('top5_accuracy'))} |",
            f"| loss (cross-entropy) | {evaluate.get('loss', float('nan')):.4f} |",
            f"| expected calibration error | {evaluate.get('ece', float('nan')):.4f} |",
            f"| macro F1 | {evaluate.get('macro_f1', float('nan')):.4f} |",
            "",
            "Per-class scores: `reports/evaluate/per_class.csv`; confusions: `reports/evaluate/confused_pairs.csv`, "
            "`confusion_matrix.png`; calibration: `reliability_diagram.png`.",
            "",
        ]
    else:
        lines += ["Not measured (run the evaluate stage).", ""]

    lines += ["## Exported models", ""]
    if export:
        parity = export.get("parity", {})
        lines += [
            f"ONNX opset {export.get('opset')}; input `pixels` uint8 [batch, {', '.join(map(str, info.image_shape))}], "
            f"output `probabilities`. Keras/ONNX parity on {parity.get('images')} test images: max |Δprob| "
            f"{parity.get('max_abs_diff', float('nan')):.2g}, top-1 "
            f"agreement {parity.get('top1_agreement', float('nan')):.4f}.",
            "",
            f"| variant | test accuracy ({export.get('eval_images')} images) "
            "| drop vs fp32 (points) | top-1 agreement with fp32 | size MB |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, v in export.get("variants", {}).items():
            lines.append(
                f"| {name} | {_pct(v.get('accuracy'))} | {v.get('accuracy_drop_points', 0):.2f} "
                f"| {v.get('top1_agreement', 1):.4f} | {v.get('size_mb')} |"
            )
        lines.append("")
    else:
        lines += ["Not exported yet (run the export stage).", ""]

    lines += ["## Speed", ""]
    if bench:
        hb = bench.get("headline_batch")
        machine = bench_results.get("machine", {})
        providers = {k: v.get("provider") for k, v in bench_results.get("models", {}).items()}
        lines += [
            f"Measured on {machine.get('cpu')} ({machine.get('cpus_usable')} "
            f"cores), GPU: {machine.get('gpu') or 'none'}. "
            f"Images/s at batch {hb} (from the median batch time):",
            "",
            "| model | runs on | images/s |",
            "|---|---|---:|",
        ]
        for name, tp in bench.get("throughput_median", {}).items():
            lines.append(f"| {name} | {providers.get(name)} | {tp.get(f'b{hb}', float('nan')):.1f} |")
        lines += ["", "Speedups: " + ", ".join(f"{k} {v}×" for k, v in bench.get("speedup", {}).items()), ""]
        lines += ["Full table: `reports/benchmark/results.md`.", ""]
    else:
        lines += ["Not measured (run the benchmark stage).", ""]

    lines += ["## Known limits", ""] + [f"- {x}" for x in LIMITS] + [""]

    lines += ["## Lineage", ""]
    lines += ["Models (md5, as dvc.lock records them):"] + [f"- `{path}`: `{h}`" for path, h in lin.items()]
    lines += [
        "",
        "Data: the split fingerprints above (sha256 of pixels and labels), from `data/prepared/dataset.json`.",
        "",
    ]
    return "\n".join(lines)


def run(params: Params, paths: Paths) -> dict[str, Any]:
    text = render(params, paths)
    with atomic_dir(paths.reports("model_card")) as out:
        (out / "model_card.md").write_text(text)
    return {"model_card": str(paths.reports("model_card") / "model_card.md")}


def main() -> None:
    run_stage(run, DataParams, ModelParams, TrainParams, FinetuneParams)


if __name__ == "__main__":
    main()

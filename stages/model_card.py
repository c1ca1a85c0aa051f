"""Model card stage: one Markdown page on what the model is, how good and how fast, and where from.

Reads what the earlier stages wrote (dataset.json, the evaluate / export / benchmark reports),
params.yaml, git and dvc.lock; writes reports/model_card/model_card.md. A missing report reads
"not measured" rather than failing, so the card can be made at any point of the pipeline.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from stages.atomic import atomic_dir
from stages.dataset import load_info
from stages.params import Params
from stages.paths import Paths

INTENDED_USE = (
    "Classifying small RGB photographs into the classes listed below, as a baseline and a worked example "
    "of a reproducible transfer-learning pipeline. Inputs are uint8 RGB images, NHWC, at the training "
    "data's native size; the model resizes and normalises them itself."
)
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


def _git(root: Path, *args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def lineage(root: Path) -> dict[str, Any]:
    """The git commit (and whether the tree had changes) and the md5 of each output in dvc.lock."""
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    outs: dict[str, str] = {}
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
    except (OSError, yaml.YAMLError):
        lock = {}
    for stage, entry in (lock.get("stages") or {}).items():
        for out in entry.get("outs") or []:
            if "md5" in out:
                outs[out["path"]] = f"{out['md5']} ({stage})"
    return {"commit": commit, "dirty": bool(status) if status is not None else None, "outs": outs}


def _pct(x: float | None) -> str:
    return "not measured" if x is None else f"{100 * x:.2f} %"


def render(params: Params, paths: Paths) -> str:
    info = load_info(paths.prepared)
    evaluate = _read_json(paths.reports("evaluate") / "metrics.json") or {}
    export = _read_json(paths.reports("export") / "metrics.json") or {}
    bench = _read_json(paths.reports("benchmark") / "metrics.json") or {}
    bench_results = _read_json(paths.reports("benchmark") / "results.json") or {}
    lin = lineage(paths.root)
    m = params.model
    try:  # the size the model really resizes to (image_size, or the backbone default × image_scale)
        from stages.backbones import get_backbone, resolve_image_size

        size = f"{resolve_image_size(get_backbone(params.backbone), m.image_size, m.image_scale)} px"
    except (ImportError, ValueError):
        size = f"{m.image_size} px" if m.image_size else "the backbone default size"

    lines = [f"# Model card: {params.backbone} on {info.source.get('path') or info.source.get('kind', 'data')}", ""]
    lines += ["## Intended use", "", INTENDED_USE, ""]

    lines += ["## Data", ""]
    lines += [f"- Source: `{json.dumps(info.source, sort_keys=True)}`"]
    if params.data.sha256:
        lines += [f"- Source archive SHA-256 (checked at ingest): `{params.data.sha256}`"]
    lines += [f"- Classes ({info.num_classes}): {', '.join(info.classes)}", f"- Image shape: {tuple(info.image_shape)} uint8 RGB"]
    lines += ["", "| split | images | content hash (sha256 of pixels + labels) |", "|---|---:|---|"]
    for split, n in info.counts.items():
        lines.append(f"| {split} | {n} | `{info.fingerprints.get(split, '')[:16]}…` |")
    lines.append("")

    lines += ["## Model", ""]
    lines += [
        f"- Backbone: `{params.backbone}` (weights: `{m.weights}`, alpha: {m.alpha or 'default'}), images resized inside "
        f"the model to {size} ({m.interpolation}), pooling {m.pooling}, dropout {m.dropout}, "
        f"head units {m.head_units or 'none'}",
        f"- Head training: {params.train.epochs} epochs, {params.train.optimizer} lr {params.train.learning_rate}, "
        f"batch {params.train.batch_size}",
        f"- Fine-tuning: {'on' if params.finetune.enabled else 'off'}, {params.finetune.epochs} epochs, "
        f"{params.finetune.optimizer} lr {params.finetune.learning_rate}, unfreeze {params.finetune.unfreeze.model_dump(exclude_none=True)}",
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
            f"{parity.get('max_abs_diff', float('nan')):.2g}, top-1 agreement {parity.get('top1_agreement', float('nan')):.4f}.",
            "",
            f"| variant | test accuracy ({export.get('eval_images')} images) | drop vs fp32 (points) | top-1 agreement with fp32 | size MB |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, v in export.get("variants", {}).items():
            lines.append(
                f"| {name} | {_pct(v.get('accuracy'))} | {v.get('accuracy_drop_points', 0):.2f} | {v.get('top1_agreement', 1):.4f} | {v.get('size_mb')} |"
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
            f"Measured on {machine.get('cpu')} ({machine.get('cpus_usable')} cores), GPU: {machine.get('gpu') or 'none'}. "
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
    lines += [f"- git commit: `{lin['commit'] or 'unknown'}`" + (" (with uncommitted changes)" if lin["dirty"] else "")]
    if lin["outs"]:
        lines += ["- dvc.lock outputs (md5):"] + [f"  - `{path}`: `{h}`" for path, h in sorted(lin["outs"].items())]
    else:
        lines += ["- dvc.lock: none yet (run through `dvc repro`)"]
    lines.append("")
    return "\n".join(lines)


def run(params: Params, paths: Paths) -> dict[str, Any]:
    text = render(params, paths)
    with atomic_dir(paths.reports("model_card")) as out:
        (out / "model_card.md").write_text(text)
    return {"model_card": str(paths.reports("model_card") / "model_card.md")}


def main() -> None:
    from stages.cli import run_stage

    run_stage(run)


if __name__ == "__main__":
    main()

"""The GPU check's scratch project: the project's code, dvc.yaml and params shrunk to seconds per
stage, with generated images beside it, in a folder of its own (the project's data/, models/ and
dvc.lock are never touched)."""

from __future__ import annotations

import gzip
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA = "../images.tar.gz"  # beside the scratch project, as ../shared is beside a checkout
WEIGHTS_FILE = "mobilenet_v2_0.35_224_no_top.weights.h5"


def make_images(root: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """`train/<class>/NNNN.png`, 32×32, a colour and stripe pattern per class (learnable, so a
    broken GPU path shows as chance accuracy, not only as an error)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    for c in range(classes):
        base = np.array([(37 * (c + 1)) % 256, (91 * (c + 2)) % 256, (53 * (c + 3)) % 256], np.float32)
        stripes = 60 * np.sin((xx * (c % 3 + 1) + yy * (c // 3 + 1)) / 2.0)
        folder = root / "train" / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(base + stripes[..., None] + rng.normal(0, 12, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(folder / f"{i:04d}.png")
    return root


def tar_tree(root: Path, archive: Path) -> Path:
    with open(archive, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tar:
            for p in sorted(root.iterdir()):
                tar.add(p, arcname=p.name)
    return archive


def tiny_params(gpu: bool, weights_dir: Path) -> dict[str, Any]:
    """params.yaml shrunk: MobileNetV2 α=0.35 (ImageNet weights when the mirror has them, else
    random), one epoch each. On a GPU: 224 px and the GPU preset's runtime switches. On CPU
    (dry run): 32 px, mirrored strategy only, since mixed bfloat16 and XLA make this CPU slower."""
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    has_weights = (weights_dir / WEIGHTS_FILE).is_file()
    p["data"].update(source="folder", path=DATA, sha256=None)
    p["model"].update(
        image_size=None if gpu else 32,
        image_scale=1.0,
        alpha=0.35,
        weights="imagenet" if has_weights else "none",
        weights_dir=str(weights_dir.resolve()) if has_weights else None,
    )
    p["train"].update(epochs=1, batch_size=32, feature_batch_size=64)
    p["finetune"].update(epochs=1, batch_size=16, steps_per_epoch=None if gpu else 2, backup_every_steps=0)
    p["finetune"]["unfreeze"] = {"top_layers": None, "top_blocks": 1, "from_block": None, "from_layer": None}
    p["export"].update(batch_size=16, max_variant_accuracy_drop=100.0)  # a tiny test split cannot judge int8
    p["export"]["parity"]["images"] = 8
    p["export"]["int8"]["calibration_images"] = 16
    p["benchmark"].update(batch_sizes=[1, 8], warmup=2, iterations=5, duration_s=None, rounds=1, keras_baseline=False)
    gpu_preset = yaml.safe_load((REPO / "presets" / "gpu.yaml").read_text())["runtime"]
    p["runtime"].update(gpu_preset if gpu else {"strategy": "mirrored"})
    return p


def make_scratch(dest: Path, gpu: bool, weights_dir: Path) -> Path:
    """A DVC project (no git: nothing here is committed) at `dest`, images at dest/../images.tar.gz."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    per_class = 80 if gpu else 14
    images = make_images(dest.parent / "image-tree", classes=4 if gpu else 3, per_class=per_class)
    tar_tree(images, dest.parent / "images.tar.gz")
    shutil.rmtree(images)
    for code in ("stages", "tlpipe"):
        shutil.copytree(REPO / code, dest / code, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", dest / "dvc.yaml")
    write_params(dest, tiny_params(gpu, weights_dir))
    return dest


def write_params(dest: Path, params: dict[str, Any]) -> None:
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def read_params(dest: Path) -> dict[str, Any]:
    return yaml.safe_load((dest / "params.yaml").read_text())

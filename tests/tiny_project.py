"""A tiny copy of this project as a user has it: a git + DVC repository with the project's code,
dvc.yaml and params.yaml shrunk to seconds per stage, its images and weights beside it (as
../shared is beside a checkout), so that `dvc repro` runs every stage for real."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import MOBILENET_V2_035, REPO, env
from tests.inputs import make_class_tree, tar_tree

CLASSES = ["cat", "dog", "frog"]
DATA = "../images.tar.gz"  # relative, like ../shared/...: the same params in any directory
WEIGHTS_DIR = "../weights"


def tiny_params() -> dict[str, Any]:
    """The project's params.yaml shrunk to seconds per stage, every switch of the CPU preset kept:
    ImageNet weights from the mirror, feature cache, fine-tuning, fp16 and int8 variants."""
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    # params.yaml's checksum pin stays: it pins the CIFAR-10 tarball's path, not this one.
    p["data"].update(source="folder", path=DATA)
    p["model"].update(image_size=32, alpha=0.35, weights="imagenet", weights_dir=WEIGHTS_DIR)
    p["train"].update(epochs=2, batch_size=8, feature_batch_size=32)
    p["finetune"].update(epochs=2, batch_size=8, steps_per_epoch=2, backup_every_steps=1)
    p["finetune"]["unfreeze"] = {"top_layers": None, "top_blocks": 1, "from_block": None, "from_layer": None}
    p["evaluate"].update(batch_size=16, grid_images=4)
    # The int8 gate is tested on its own (tests/test_export.py): 4 test images cannot judge it.
    p["export"].update(batch_size=16, max_variant_accuracy_drop=100.0)
    p["export"]["parity"]["images"] = 8
    p["export"]["int8"]["calibration_images"] = 8
    p["benchmark"].update(
        providers=["CPUExecutionProvider"], batch_sizes=[1, 4], warmup=1, iterations=2, rounds=1, keras_baseline=False
    )
    return p


def make_project(
    dest: Path, params: dict[str, Any] | None = None, folders: tuple[str, ...] = ("stages", "tlpipe", "flows")
) -> Path:
    """A committed git + DVC repository at `dest` with images and weights beside it."""
    if not MOBILENET_V2_035.is_file():
        import pytest

        pytest.skip(f"the shared ImageNet weights are not at {MOBILENET_V2_035}")
    images = make_class_tree(dest.parent / "image-tree", CLASSES, {"train": 14})
    tar_tree(images, dest.parent / "images.tar.gz")
    (dest.parent / "weights").mkdir(exist_ok=True)
    shutil.copy(MOBILENET_V2_035, dest.parent / "weights" / MOBILENET_V2_035.name)
    dest.mkdir(parents=True)
    for folder in folders:
        shutil.copytree(REPO / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".gitignore", "README.md", "prefect.yaml"):
        shutil.copy(REPO / name, dest / name)
    (dest / "params.yaml").write_text(yaml.safe_dump(params or tiny_params(), sort_keys=False))
    run(dest, "git", "init", "-q", "-b", "main")
    run(dest, "dvc", "init", "-q")
    commit(dest, "tiny project")
    return dest


def run(
    cwd: Path, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 600, check: bool = True
) -> str:
    """A command's stdout and stderr together; a failure (when `check`) shows them."""
    proc = subprocess.run(args, cwd=cwd, env=env(extra_env), capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    if check:
        assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{output[-4000:]}"
    return output


def commit(cwd: Path, message: str) -> None:
    run(cwd, "git", "add", "-A")
    run(cwd, "git", "commit", "-qm", message)


def ran_stages(output: str) -> list[str]:
    """The stages `dvc repro` ran (not skipped, not restored), in order, from its output (or a log of it)."""
    return list(dict.fromkeys(re.findall(r"Running stage '([\w:/.-]+)'", output)))


@contextmanager
def put_back(root: Path) -> Iterator[Path]:
    """A reproduced, committed project that a test may change: whatever happens in the test, the
    committed params.yaml, dvc.lock and test metrics (git) and the outputs dvc.lock records (DVC's
    cache) are put back afterwards, so that one failing test does not leave the next a changed
    project."""
    try:
        yield root
    finally:
        run(root, "git", "checkout", "HEAD", "--", "params.yaml", "dvc.lock", "reports")
        run(root, "dvc", "checkout", "--force")

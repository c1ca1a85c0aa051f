"""Shared fixtures: small real-format inputs made on the fly, never mocks of the libraries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Keep TF quiet and the tools off the network in every test process (and the subprocesses they start).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_WEIGHTS = SHARED / "weights"
MOBILENET_V2_035 = SHARED_WEIGHTS / "mobilenet_v2_0.35_224_no_top.weights.h5"
BIN = str(Path(sys.executable).parent)  # the venv's bin: dvc, and the python DVC stages run with


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment commands of the tests run in: the venv's tools first, DVC offline, a git identity."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@x",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@x",
        **(extra or {}),
    }


def sh(*args: str, cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def synthetic_images(n: int, size: int, label: np.ndarray, seed: int = 0) -> np.ndarray:
    """Class-dependent, learnable uint8 images: each class has its own colour and stripe pattern."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = np.empty((n, size, size, 3), np.uint8)
    for i, c in enumerate(label):
        base = np.array([(37 * (c + 1)) % 256, (91 * (c + 2)) % 256, (53 * (c + 3)) % 256], np.float32)
        stripes = 60 * np.sin((xx * (c % 3 + 1) + yy * (c // 3 + 1)) / 2.0)
        img = base + stripes[..., None] + rng.normal(0, 12, (size, size, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def rewrite_split(prepared: Path, split: str, x: np.ndarray, y: np.ndarray) -> None:
    """Replace one split's shards of a prepared directory (and its index entry) with x, y."""
    from tlpipe.data.records import write_records

    info = json.loads((prepared / "dataset.json").read_text())
    for name in info["shards"][split]["files"]:
        (prepared / name).unlink()
    records = write_records(prepared, split, x, y)
    info["shards"][split] = records.describe()
    info["counts"][split], info["fingerprints"][split] = records.count, records.fingerprint
    (prepared / "dataset.json").write_text(json.dumps(info))


def write_prepared(
    prepared: Path,
    classes: list[str],
    per_class: dict[str, int] | None = None,
    size: int = 32,
    seed: int = 0,
) -> None:
    """Write a prepared-data directory in the ingest stage's format (tlpipe/data/dataset.py)."""
    from tlpipe.data.records import write_records

    per_class = per_class or {"train": 20, "val": 5, "test": 5}
    prepared.mkdir(parents=True, exist_ok=True)
    counts, prints, shards, rows = {}, {}, {}, []
    for k, (split, n) in enumerate(per_class.items()):
        y = np.repeat(np.arange(len(classes)), n).astype(np.int64)
        x = synthetic_images(len(y), size, y, seed=seed + 101 * k)
        records = write_records(prepared, split, x, y)
        counts[split], prints[split], shards[split] = len(y), records.fingerprint, records.describe()
        rows += [f"{split},{i},{c},{classes[c]},{split}{i},synthetic" for i, c in enumerate(y)]
    (prepared / "dataset.json").write_text(
        json.dumps(
            {
                "classes": classes,
                "image_shape": [size, size, 3],
                "counts": counts,
                "fingerprints": prints,
                "source": {"kind": "synthetic"},
                "shards": shards,
            }
        )
    )
    (prepared / "manifest.csv").write_text("split,index,label,class_name,sha256,source\n" + "\n".join(rows) + "\n")


@pytest.fixture
def prepared_dir(tmp_path: Path) -> Path:
    """A project root with small prepared data of 3 classes at 32×32."""
    write_prepared(tmp_path / "data" / "prepared", ["cat", "dog", "frog"])
    return tmp_path


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[dict[str, str]]:
    """`prefect server start` on loopback with its own database; this process's flows report to it.

    Yields the environment a client needs (PREFECT_HOME, PREFECT_API_URL)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.prefect_client import start_server, stop_server

    home = tmp_path_factory.mktemp("prefect-home")
    proc, url = start_server(home)
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            yield {"PREFECT_HOME": str(home), "PREFECT_API_URL": url}
    finally:
        stop_server(proc)


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory, prefect_server) -> dict[str, Any]:
    """The tiny project reproduced in two directories of different path lengths: `a` by `dvc repro`
    with TLPIPE_TRACE_READS (the params keys each stage read, in `reads`), `b` by the pipeline flow
    (its final state in `flow_state`). Both are committed afterwards, as a user keeps dvc.lock;
    tests may change `b` but must leave it reproduced and committed.
    """
    from flows.pipeline import pipeline
    from tests.tiny_project import commit, make_project, run

    base = tmp_path_factory.mktemp("reproduced")
    reads = base / "reads"
    a = make_project(base / "a" / "repo")
    b = make_project(base / "a-much-longer-directory-name" / "repo")
    run(a, "dvc", "repro", extra_env={"TLPIPE_TRACE_READS": str(reads)})
    state = pipeline(project_dir=str(b), return_state=True)
    assert state.is_completed(), state.message
    for root in (a, b):
        commit(root, "reproduced")
    return {"a": a, "b": b, "reads": reads, "flow_state": state}


def nvidia_gpu_present() -> bool:
    """An NVIDIA GPU the driver lists (without starting TensorFlow in the test process)."""
    import shutil

    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    return done.returncode == 0 and "GPU" in done.stdout


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests run only where an NVIDIA GPU is: on CPU machines (CI) they are skipped, saying why.

    Under pytest-xdist (`--dist loadgroup`, see pyproject.toml) every test is grouped with the
    tests that share its expensive fixtures, so each is built once: the tests of the reproduced
    tiny project together (the session fixture takes minutes), every other module on one worker
    (its module-scoped tiny models)."""
    for item in items:
        group = "reproduced" if "reproduced" in getattr(item, "fixturenames", ()) else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    if gpu_tests and not nvidia_gpu_present():
        skip = pytest.mark.skip(reason="GPU-only code path: no NVIDIA GPU on this machine (nvidia-smi -L)")
        for item in gpu_tests:
            item.add_marker(skip)

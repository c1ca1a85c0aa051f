"""Reproduction that reproduces: the same inputs give the same bytes, so DVC recognises a rerun
as one, restores instead of retraining, and a fresh clone leaves the committed dvc.lock as it is."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.tiny_project import commit, put_back, ran_stages, run

# The files whose bytes may change between two runs on the same inputs: wall times and other
# facts of a run, the benchmark's measurements, and the model card that quotes them.
VOLATILE = re.compile(r"^reports/(\w+/timings\.json|benchmark/.*|model_card/.*)$")


def lock_entries(root: Path) -> dict[tuple[str, str, str], Any]:
    """(stage, deps|outs|params, path or file) → what dvc.lock records for it."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    found: dict[tuple[str, str, str], Any] = {}
    for stage, entry in lock["stages"].items():
        found[(stage, "cmd", "")] = entry["cmd"]
        for kind in ("deps", "outs"):
            for item in entry.get(kind, []):
                found[(stage, kind, item["path"])] = {k: v for k, v in item.items() if k != "path"}
        for file, values in (entry.get("params") or {}).items():
            found[(stage, "params", file)] = values
    return found


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def b(reproduced) -> Iterator[Path]:
    """The reproduced project `b`, put back as committed after the test, however it ended."""
    with put_back(reproduced["b"]) as root:
        yield root


def test_a_reproduction_in_another_directory_writes_the_same_dvc_lock(reproduced) -> None:
    a, b = lock_entries(reproduced["a"]), lock_entries(reproduced["b"])
    assert set(a) == set(b)
    differ = sorted(key for key in a if a[key] != b[key])
    assert all(VOLATILE.match(path) for _, _, path in differ), differ
    # The benchmark really measured again (so the comparison above had something to ignore).
    assert ("benchmark", "outs", "reports/benchmark/results.json") in differ
    # ...and what training and export produced is byte for byte the same.
    stable = [
        ("ingest", "data/prepared"),
        ("validate", "reports/validate/result.json"),
        ("validate", "reports/validate/data_docs"),
        ("train", "models/head.keras"),
        ("train", "reports/train/metrics.json"),
        ("finetune", "models/model.keras"),
        ("export", "models/model.onnx"),
        ("export", "models/variants"),
        ("evaluate", "reports/evaluate/metrics.json"),
    ]
    for stage, path in stable:
        kind = "metrics" if path.endswith("metrics.json") else "outs"
        assert a[(stage, "outs", path)] == b[(stage, "outs", path)], (stage, kind, path)


def test_a_deleted_model_is_restored_from_the_run_cache_and_nothing_downstream_reruns(b) -> None:
    root = b
    lock_before, head_md5 = (root / "dvc.lock").read_text(), md5(root / "models" / "head.keras")
    (root / "models" / "head.keras").unlink()
    out = run(root, "dvc", "repro")
    assert "Stage 'train' is cached - skipping run, checking out outputs" in out
    assert ran_stages(out) == [] and "Stage 'finetune' didn't change, skipping" in out
    assert md5(root / "models" / "head.keras") == head_md5
    assert (root / "dvc.lock").read_text() == lock_before


def test_an_overwritten_model_is_restored_from_the_run_cache_and_nothing_downstream_reruns(b) -> None:
    root = b
    head = root / "models" / "head.keras"
    lock_before, head_bytes = (root / "dvc.lock").read_text(), head.read_bytes()
    head.write_bytes(b"not a model: overwritten by hand")
    assert "models/head.keras" in run(root, "dvc", "status")  # DVC sees the change...
    out = run(root, "dvc", "repro")
    # ...and puts the committed bytes back from the run cache instead of retraining.
    assert "Stage 'train' is cached - skipping run, checking out outputs" in out
    assert ran_stages(out) == [] and "Stage 'finetune' didn't change, skipping" in out
    assert head.read_bytes() == head_bytes
    assert (root / "dvc.lock").read_text() == lock_before
    assert "up to date" in run(root, "dvc", "status")


def test_params_switched_back_restore_train_from_the_run_cache(b) -> None:
    root = b
    lock_before = (root / "dvc.lock").read_text()
    out = run(root, "dvc", "exp", "run", "-S", "train.epochs=1", "train")
    assert ran_stages(out) == ["train"]
    out = run(root, "dvc", "exp", "run", "-S", "train.epochs=2", "train")
    assert "Stage 'train' is cached - skipping run, checking out outputs" in out and ran_stages(out) == []
    assert ran_stages(run(root, "dvc", "repro")) == []  # downstream of train is unchanged
    assert (root / "dvc.lock").read_text() == lock_before


def readme_command(pattern: str) -> str:
    """The README's command line matching `pattern` (what a user copies)."""
    for line in (REPO / "README.md").read_text().splitlines():
        command = line.split("  #")[0].strip()
        if re.search(pattern, command):
            return command
    raise AssertionError(f"the README has no command matching {pattern!r}")


def test_the_documented_remeasure_command_reruns_the_benchmark_alone(reproduced) -> None:
    root = reproduced["a"]
    out = run(root, *shlex.split(readme_command(r"^dvc repro -f .*benchmark")))
    assert ran_stages(out) == ["benchmark"]


def test_the_documented_recipe_after_a_failed_experiment_restores_the_workspace(b) -> None:
    root = b
    params, lock = (root / "params.yaml").read_text(), (root / "dvc.lock").read_text()
    head_md5 = md5(root / "models" / "head.keras")
    failed = run(root, "dvc", "exp", "run", "-S", "model.weights=missing.weights.h5", check=False)
    assert "model.weights='missing.weights.h5': file not found" in failed
    # What a user then finds: params changed, the failed stage's outputs gone.
    assert (root / "params.yaml").read_text() != params and not (root / "models" / "head.keras").exists()
    for command in readme_command(r"git checkout .*params\.yaml").split(" && "):
        run(root, *shlex.split(command))
    assert (root / "params.yaml").read_text() == params and (root / "dvc.lock").read_text() == lock
    assert md5(root / "models" / "head.keras") == head_md5
    assert run(root, "git", "status", "--porcelain") == ""  # the git-tracked metrics are back too
    assert ran_stages(run(root, "dvc", "repro")) == []


def test_the_test_metrics_are_in_git_and_their_cache_flag_changes_nothing_dvc_records(reproduced, tmp_path) -> None:
    root = reproduced["a"]
    tracked = run(root, "git", "ls-files", "reports").split()
    assert tracked == ["reports/evaluate/metrics.json"]
    assert not re.search(r"^\s*cache:", (root / "dvc.lock").read_text(), re.M)  # dvc.lock records no cache flag
    # The same project with every output cached, as before the metrics moved to git: DVC sees no change.
    copy = tmp_path / "machine" / "repo"
    shutil.copytree(root.parent, copy.parent, symlinks=True)
    cached = (copy / "dvc.yaml").read_text().replace(":\n          cache: false\n", "\n")
    assert cached != (copy / "dvc.yaml").read_text()
    run(copy, "dvc", "repro")  # earlier tests may have re-measured the benchmark: the model card follows
    assert json.loads(run(copy, "dvc", "status", "--json")) == {}
    (copy / "dvc.yaml").write_text(cached)
    assert json.loads(run(copy, "dvc", "status", "--json")) == {}


def test_a_clone_elsewhere_gets_the_trained_stages_from_a_dvc_remote_without_retraining(reproduced, tmp_path) -> None:
    """One machine pushes (`dvc push --run-cache`); another clones and pulls (`dvc pull --run-cache`
    then `dvc repro`, or `dvc repro --pull`): no stage runs, and dvc.lock and the models are the same."""
    origin = tmp_path / "origin" / "repo"
    shutil.copytree(reproduced["a"].parent, origin.parent, symlinks=True)  # the shared project stays as it is
    run(origin, "dvc", "repro")  # earlier tests may have re-measured the benchmark: the model card follows
    if run(origin, "git", "status", "--porcelain"):
        commit(origin, "as reproduced")
    run(origin, "dvc", "remote", "add", "-d", "store", str(tmp_path / "dvc-remote"))
    commit(origin, "a DVC remote")
    # An experiment this machine ran and the other never did, pushed as it stood: `--run-cache`
    # sends DVC's run records (all of them), `dvc push` the outputs of the workspace it is run in.
    assert ran_stages(run(origin, "dvc", "exp", "run", "-S", "train.epochs=1", "train")) == ["train"]
    head_one_epoch = md5(origin / "models" / "head.keras")
    run(origin, "dvc", "push", "--run-cache")
    run(origin, "git", "checkout", "--", "params.yaml", "dvc.lock")
    run(origin, "dvc", "checkout")
    run(origin, "dvc", "push")
    models = ("models/head.keras", "models/model.keras", "models/model.onnx", "models/variants/model.int8.onnx")
    for name, steps in {
        "pulled": [("dvc", "pull", "--run-cache"), ("dvc", "repro")],
        "repro-pull": [("dvc", "repro", "--pull")],
    }.items():
        clone = tmp_path / name / "repo"
        clone.parent.mkdir()
        run(tmp_path, "git", "clone", "-q", str(origin), str(clone))
        for beside in ("images.tar.gz", "weights"):  # the source data and weights, as ../shared is beside a checkout
            (shutil.copytree if (origin.parent / beside).is_dir() else shutil.copy)(
                origin.parent / beside, clone.parent / beside
            )
        out = "".join(run(clone, *step) for step in steps)
        assert ran_stages(out) == [], out
        done = "Pulling data for stage: 'train'" if name == "repro-pull" else "Stage 'train' didn't change, skipping"
        assert done in out, out
        assert (clone / "dvc.lock").read_text() == (origin / "dvc.lock").read_text()
        assert all(md5(clone / m) == md5(origin / m) for m in models)
        assert run(clone, "git", "status", "--porcelain") == ""
        assert ran_stages(run(clone, "dvc", "repro")) == []
    # An output lost there comes back the same way.
    (clone / "models" / "head.keras").unlink()
    out = run(clone, "dvc", "repro", "--pull")
    assert ran_stages(out) == [] and "Pulling data for stage: 'train'" in out, out
    assert md5(clone / "models" / "head.keras") == md5(origin / "models" / "head.keras")

    # Where the run cache was pulled, DVC's run cache restores train there: a lost model, and (its
    # outputs pulled as the run record names them: --pull) the experiment run on the other machine
    # only, come back without training.
    clone = tmp_path / "pulled" / "repo"
    (clone / "models" / "head.keras").unlink()
    out = run(clone, "dvc", "repro")
    assert "Stage 'train' is cached - skipping run, checking out outputs" in out and ran_stages(out) == [], out
    assert md5(clone / "models" / "head.keras") == md5(origin / "models" / "head.keras")
    out = run(clone, "dvc", "exp", "run", "--pull", "-S", "train.epochs=1", "train")
    assert "Stage 'train' is cached - skipping run, checking out outputs" in out and ran_stages(out) == [], out
    assert md5(clone / "models" / "head.keras") == head_one_epoch

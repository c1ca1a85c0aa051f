"""The exported model as DVC artifacts (dvc.yaml `artifacts:`): declared as the export stage writes
it, and fetched by version from a plain git URL and a DVC remote with the real `dvc artifacts get`
and `dvc get --rev`, as the README's release steps say."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.conftest import REPO
from tests.tiny_project import commit, run

ARTIFACTS = {"model": "fp32", "model-fp16": "fp16", "model-int8": "int8"}


def test_dvc_yaml_declares_the_exported_model_and_its_variants_as_model_artifacts() -> None:
    from dvc.repo import Repo

    declared = Repo(str(REPO)).artifacts.read()["dvc.yaml"]  # DVC's own reading and name checks
    assert set(declared) == set(ARTIFACTS)
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    export_outs, card_outs = stages["export"]["outs"], stages["model_card"]["outs"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, variant in ARTIFACTS.items():
        artifact = declared[name]
        assert artifact.type == "model" and artifact.desc and variant in artifact.labels
        # Each path is an export output (or a file of its variants folder) that the default params build.
        if variant == "fp32":
            assert artifact.path == "models/model.onnx" and artifact.path in export_outs
        else:
            assert artifact.path == f"models/variants/model.{variant}.onnx" and "models/variants" in export_outs
            assert variant in params["export"]["variants"]
        assert artifact.meta["model_card"] in card_outs
        assert f"--variant {variant}" in artifact.meta["predict"] or variant == "fp32"


def test_a_tagged_release_is_fetched_by_version_from_git_and_a_dvc_remote(reproduced, tmp_path: Path) -> None:
    # A clone of the reproduced tiny project with a copy of its cache: the shared fixture stays untouched.
    src, repo = reproduced["a"], tmp_path / "repo"
    run(tmp_path, "git", "clone", "-q", str(src), str(repo))
    shutil.copytree(src / ".dvc" / "cache", repo / ".dvc" / "cache")
    run(repo, "dvc", "checkout")
    run(repo, "dvc", "remote", "add", "-d", "storage", str(tmp_path / "dvc-remote"))
    commit(repo, "DVC remote")
    run(repo, "git", "tag", "-a", "model@v1.0.0", "-m", "first release")
    run(repo, "dvc", "push")
    v1 = {f: (repo / f).read_bytes() for f in ("models/model.onnx", "models/variants/model.int8.onnx")}

    # A second release whose model differs (a stand-in for a retrained one: the int8 bytes, committed
    # as the export stage's output), so that the versions are told apart.
    shutil.copy(repo / "models/variants/model.int8.onnx", repo / "models/model.onnx")
    run(repo, "dvc", "commit", "-f", "export")
    commit(repo, "second model")
    run(repo, "git", "tag", "-a", "model@v1.1.0", "-m", "second release")
    run(repo, "dvc", "push")

    # The published project: a bare git repository (no DVC cache) and the DVC remote.
    origin = tmp_path / "origin.git"
    run(tmp_path, "git", "init", "-q", "--bare", "-b", "main", str(origin))
    run(repo, "git", "push", "-q", str(origin), "main", "--tags")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run(elsewhere, "dvc", "artifacts", "get", str(origin), "model", "--rev", "v1.0.0", "-o", "v1.onnx")
    run(elsewhere, "dvc", "artifacts", "get", str(origin), "model", "-o", "latest.onnx")  # no --rev: newest
    run(elsewhere, "dvc", "get", str(origin), "models/model.onnx", "--rev", "model@v1.0.0", "-o", "get-v1.onnx")
    variant = "models/variants/model.int8.onnx"
    run(elsewhere, "dvc", "get", str(origin), variant, "--rev", "model@v1.0.0", "-o", "int8.onnx")
    assert (elsewhere / "v1.onnx").read_bytes() == v1["models/model.onnx"]
    assert (elsewhere / "get-v1.onnx").read_bytes() == v1["models/model.onnx"]
    assert (elsewhere / "int8.onnx").read_bytes() == v1[variant]
    assert (
        (elsewhere / "latest.onnx").read_bytes() == (repo / "models/model.onnx").read_bytes() != v1["models/model.onnx"]
    )
    url = run(elsewhere, "dvc", "artifacts", "get", "--show-url", str(origin), "model", "--rev", "v1.1.0")
    assert str(tmp_path / "dvc-remote") in url  # from the DVC remote: the bare repository has no cache

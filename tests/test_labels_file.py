"""The labels_file source (images named in a labels file) and bad images at the door, every
source: Kaggle's CIFAR-10 layout built from the shared JPEGs, then each bad input, with its error."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages import ingest, train, validate
from tests.conftest import REPO, synthetic_images
from tests.inputs import BAD_IMAGES, bad_image, make_class_tree, png_bytes, tar_tree
from tests.kaggle import kaggle_zip, seven_zip
from tests.test_ingest import assert_nothing_written
from tests.test_train import tiny_params
from tlpipe.config.params import parse_params, with_overrides
from tlpipe.data.dataset import CIFAR10_CLASSES, load_info, load_split
from tlpipe.model.keras_io import keras_predict, load_keras_model
from tlpipe.paths import Paths
from tlpipe.util.errors import DataError


def labelled(path: Path, **labels) -> object:
    data = {"source": "labels_file", "path": str(path), "labels": labels}
    return parse_params({"seed": 7, "data": data})


def labelled_dir(root: Path, n: int = 12, classes: tuple[str, ...] = ("b", "a", "c")) -> Path:
    """train/<id>.png and trainLabels.csv, classes in turn."""
    y = np.arange(n) % len(classes)
    for i, img in enumerate(synthetic_images(n, 16, y, seed=3)):
        (root / "train").mkdir(parents=True, exist_ok=True)
        (root / "train" / f"{i + 1}.png").write_bytes(png_bytes(img))
    (root / "trainLabels.csv").write_text("id,label\n" + "".join(f"{i + 1},{classes[c]}\n" for i, c in enumerate(y)))
    return root


def test_kaggle_zip_trains_through_ingest_validate_and_train(tmp_path: Path) -> None:
    archive = kaggle_zip(tmp_path / "cifar-10.zip", per_class=10)
    paths = Paths(tmp_path / "project")
    params = with_overrides(
        tiny_params(train={"epochs": 1, "batch_size": 8, "feature_batch_size": 32}),
        data={"source": "labels_file", "path": str(archive), "val_fraction": 0.2, "test_fraction": 0.2},
    )
    metrics = ingest.run(params, paths)
    assert metrics["counts"] == {"train": 60, "val": 20, "test": 20}
    info = load_info(paths.prepared)
    assert info.classes == list(CIFAR10_CLASSES) and info.image_shape == (32, 32, 3)
    assert info.source["kind"] == "labels_file" and info.source["labels_files"] == {"train": "trainLabels.csv"}
    manifest = (paths.prepared / "manifest.csv").read_text()
    assert "train/1.png" in manifest and "test/" not in manifest  # test.7z was never read
    assert validate.run(params, paths)["success"] is True
    metrics = train.run(params, paths)
    # 60 real CIFAR images of 10 classes for one epoch: no floor above chance to assert, but the
    # reported accuracy is the saved head model's on the 20 validation images (to one image:
    # training scored cached features, this scores pixels).
    x_val, y_val = load_split(paths.prepared, "val")
    predicted = keras_predict(load_keras_model(paths.head_model), x_val, 8).argmax(1)
    reported = metrics["best"]["val_accuracy"]
    assert abs(reported * 20 - round(reported * 20)) < 1e-6  # a count of the 20 images
    assert abs(reported - float((predicted == y_val).mean())) <= 1 / 20 + 1e-9


def test_filename_label_tsv_with_a_labelled_test_file_and_given_class_order(tmp_path: Path) -> None:
    root = make_class_tree(tmp_path / "src", ["x", "y"], {"train": 6, "test": 3})
    for split in ("train", "test"):
        rows = [f"{split}/{c}/{f.name}\t{c}\n" for c in ("x", "y") for f in sorted((root / split / c).iterdir())]
        (root / f"{split}.tsv").write_text("filename\tclass\n" + "".join(rows))
    params = labelled(
        root, file="train.tsv", test_file="test.tsv", images=".", test_images=".",
        id_column="filename", label_column="class", classes=["y", "x"], unlisted="skip",
    )  # fmt: skip
    ingest.run(params, Paths(tmp_path / "p"))
    info = load_info(tmp_path / "p" / "data" / "prepared")
    assert info.classes == ["y", "x"] and info.counts["test"] == 6
    _, y = load_split(tmp_path / "p" / "data" / "prepared", "test")
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]
    # images: "." holds test images too: unlisted in train.tsv, skipped and counted
    assert info.source["skipped_unlisted"] == {"train": 6, "test": 12}


def _copy_image(root: Path, src: str, dest: str) -> None:
    (root / "train" / dest).write_bytes((root / "train" / src).read_bytes())


def _labels(root: Path) -> Path:
    return root / "trainLabels.csv"


BREAKAGES = {
    "missing image": (
        lambda r: (r / "train" / "5.png").unlink(),
        r"trainLabels.csv: 1 image\(s\) it names are not in .*line 6: train/5.png",
    ),
    "unlisted image": (
        lambda r: _copy_image(r, "1.png", "99.png"),
        r"1 image\(s\) under train/ not named in .*trainLabels.csv \(e.g. train/99.png\).*unlisted: skip",
    ),
    "duplicate id": (
        lambda r: _append(r, "3,a\n"),
        r"trainLabels.csv line 14: id '3' names train/3.png again \(first on line 4\)",
    ),
    "empty label": (lambda r: _edit(r, "4,b", "4,"), r"trainLabels.csv line 5: empty 'label' for id '4'"),
    "field count": (lambda r: _edit(r, "4,b", "4,b,extra"), r"trainLabels.csv line 5: 3 fields, expected 2"),
    "bad quoting": (lambda r: _edit(r, "4,b", '4,"b'), r"trainLabels.csv line \d+: (malformed CSV|\d fields)"),
    "missing column": (
        lambda r: _edit(r, "id,label", "id,klass"),
        r"trainLabels.csv line 1: no column 'label' in the header \['id', 'klass'\]; set data.labels.label_column",
    ),
    "no rows": (lambda r: _labels(r).write_text("id,label\n"), r"trainLabels.csv: no rows below the header"),
    "empty file": (lambda r: _labels(r).write_text(""), r"trainLabels.csv: empty labels file"),
    "not text": (lambda r: _labels(r).write_bytes(b"\xff\xfe\x00bad"), r"trainLabels.csv: not UTF-8 text"),
    "no labels file": (
        lambda r: _labels(r).unlink(),
        r"trainLabels.csv: labels file not found \(data.labels.file\)",
    ),
    "one class": (lambda r: _relabel(r, "a"), r"1 class \(a\); a classifier needs at least two"),
}


def _edit(root: Path, old: str, new: str) -> None:
    f = root / "trainLabels.csv"
    f.write_text("".join(f"{new if line == old else line}\n" for line in f.read_text().splitlines()))


def _append(root: Path, text: str) -> None:
    (root / "trainLabels.csv").write_text((root / "trainLabels.csv").read_text() + text)


def _relabel(root: Path, label: str) -> None:
    lines = (root / "trainLabels.csv").read_text().splitlines()
    (root / "trainLabels.csv").write_text("\n".join([lines[0], *(f"{x.split(',')[0]},{label}" for x in lines[1:])]))


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_each_bad_labels_file_is_one_error_naming_file_and_line(tmp_path: Path, breakage: str) -> None:
    root = labelled_dir(tmp_path / "src")
    change, message = BREAKAGES[breakage]
    change(root)
    with zipfile.ZipFile(tmp_path / "src.zip", "w") as zf:  # the same in an archive
        for f in sorted(root.rglob("*")):
            zf.write(f, f.relative_to(root).as_posix())
    for source in (root, tmp_path / "src.zip"):
        with pytest.raises(DataError, match=message):
            ingest.run(labelled(source), Paths(tmp_path / "out"))
        assert_nothing_written(tmp_path / "out")


def test_unlisted_images_are_skipped_and_counted_when_asked_and_labels_outside_classes_refused(tmp_path: Path) -> None:
    root = labelled_dir(tmp_path / "src")
    (root / "train" / "99.png").write_bytes((root / "train" / "1.png").read_bytes())
    metrics = ingest.run(labelled(root, unlisted="skip"), Paths(tmp_path / "ok"))
    assert sum(metrics["counts"].values()) == 12
    assert load_info(tmp_path / "ok" / "data" / "prepared").source["skipped_unlisted"] == {"train": 1}
    with pytest.raises(DataError, match=r"trainLabels.csv line 2: label 'b' is not one of data.labels.classes"):
        ingest.run(labelled(root, unlisted="skip", classes=["a", "c"]), Paths(tmp_path / "out"))
    assert_nothing_written(tmp_path / "out")


def test_a_class_missing_from_train_is_refused(tmp_path: Path) -> None:
    root = labelled_dir(tmp_path / "src", classes=("a", "b"))
    (root / "test").mkdir()
    (root / "test" / "1.png").write_bytes((root / "train" / "1.png").read_bytes())
    (root / "test.csv").write_text("id,label\n1,zebra\n")
    with pytest.raises(DataError, match=r"class\(es\) \['zebra'\] have no training images"):
        ingest.run(labelled(root, test_file="test.csv"), Paths(tmp_path / "out"))
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_images_are_one_line_naming_the_file_in_every_image_source(tmp_path: Path, kind: str) -> None:
    tree = make_class_tree(tmp_path / "tree", ["a", "b"], {"train": 4})
    (tree / "train" / "b" / "0002.png").write_bytes(bad_image(kind))
    kaggle = labelled_dir(tmp_path / "kaggle")
    (kaggle / "train" / "7.png").write_bytes(bad_image(kind))
    archive = tmp_path / "kaggle.zip"
    seven_zip({f"train/{f.name}": f.read_bytes() for f in (kaggle / "train").iterdir()}, tmp_path / "train.7z")
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(tmp_path / "train.7z", "train.7z")
        zf.write(kaggle / "trainLabels.csv", "trainLabels.csv")
    tarball = tar_tree(tree, tmp_path / "t.tar.gz")
    cases = [
        (parse_params({"data": {"source": "folder", "path": str(tree)}}), r"tree/train/b/0002.png: "),
        (parse_params({"data": {"source": "folder", "path": str(tarball)}}), r"t.tar.gz:train/b/0002.png: "),
        (labelled(kaggle), r"kaggle/train/7.png: "),
        (labelled(archive), r"kaggle.zip:train/7.png: "),
    ]
    for params, where in cases:
        with pytest.raises(DataError, match=where + BAD_IMAGES[kind]):
            ingest.run(params, Paths(tmp_path / "out"))
        assert_nothing_written(tmp_path / "out")


def test_cli_prints_one_line_and_exits_nonzero(tmp_path: Path) -> None:
    root = labelled_dir(tmp_path / "src")
    (root / "train" / "3.png").write_bytes(bad_image("truncated"))
    project = tmp_path / "project"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump({"data": {"source": "labels_file", "path": str(root)}}))
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "stages.ingest"], cwd=project, capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {root}/train/3.png: unreadable image")
    assert "Traceback" not in proc.stderr and not (project / "data").exists()

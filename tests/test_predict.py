"""Batch prediction with the exported tiny model: tables and Kaggle submissions, every input kind,
bad images on their rows, preprocessing identical to ingest's, the CLI."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, SHARED, synthetic_images
from tests.inputs import BAD_IMAGES, bad_image, png_bytes
from tests.kaggle import kaggle_zip
from tests.tiny_models import CLASSES, tiny_project
from tlpipe.config.params import Params, with_overrides
from tlpipe.data.images import decode_image, register_openers
from tlpipe.export.onnx_model import ProviderError, gpu_device_present, open_model
from tlpipe.paths import Paths
from tlpipe.predict.run import predict
from tlpipe.util.errors import DataError


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return tiny_project(tmp_path_factory)


def params(**predict_params) -> Params:
    return with_overrides(Params(), predict={"providers": ["CPUExecutionProvider"], **predict_params})


def images_dir(root: Path, n: int, size: int = 32, seed: int = 1) -> tuple[Path, np.ndarray]:
    pixels = synthetic_images(n, size, np.arange(n) % 3, seed=seed)
    root.mkdir(parents=True)
    for i, img in enumerate(pixels):
        (root / f"img{i + 1}.png").write_bytes(png_bytes(img))
    return root, pixels


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_table_rows_match_the_model_on_the_same_pixels_and_bad_images_get_their_row(
    project: Path, tmp_path: Path
) -> None:
    src, pixels = images_dir(tmp_path / "in", 11)
    for kind in BAD_IMAGES:
        (src / f"bad_{kind}.png").write_bytes(bad_image(kind))
    (src / "notes.txt").write_text("not an image: passed over")
    out = tmp_path / "out" / "predictions.csv"
    summary = predict(str(src), out, params(batch_size=4, top_k=2, probabilities=True), Paths(project))
    assert summary["images"] == 11 + len(BAD_IMAGES) and summary["unreadable"] == len(BAD_IMAGES)
    assert summary["provider"] == "CPUExecutionProvider"
    table = rows(out)
    assert list(table[0]) == ["file", "label", "confidence", "top_k", *(f"p_{c}" for c in CLASSES), "error"]
    good = [r for r in table if not r["error"]]
    assert [r["file"] for r in good] == [f"img{i}.png" for i in range(1, 12)]  # natural order: img2 before img10
    expected = open_model(Paths(project).onnx_model).predict(pixels, 8)
    got = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in good])
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert [r["label"] for r in good] == [CLASSES[k] for k in expected.argmax(1)]
    assert all(len(r["top_k"].split()) == 2 for r in good)
    bad = {r["file"]: r for r in table if r["error"]}
    for kind, message in BAD_IMAGES.items():
        row = bad[f"bad_{kind}.png"]
        assert row["label"] == "" and row["confidence"] == ""
        assert re.search(message, row["error"]), (kind, row["error"])
    written = json.loads((tmp_path / "out" / "predictions.summary.json").read_text())
    assert {e["file"] for e in written["errors"]} == set(bad)


def test_kaggle_submission_from_the_7z_inside_the_zip_matches_the_sample_format(project: Path, tmp_path: Path) -> None:
    archive = kaggle_zip(tmp_path / "cifar-10.zip", per_class=1, test_images=23)
    out = tmp_path / "submission.csv"
    summary = predict(str(archive), out, params(format="submission", probabilities=True), Paths(project), folder="test")
    assert summary["images"] == 23 and summary["unreadable"] == 0  # train/ never read: --folder test
    with zipfile.ZipFile(archive) as zf:
        sample = zf.read("sampleSubmission.csv").decode()
    text = out.read_text()
    assert text.splitlines()[0] == sample.splitlines()[0] == "id,label" and text.endswith("\n")
    assert [line.split(",")[0] for line in text.splitlines()] == [line.split(",")[0] for line in sample.splitlines()]
    assert {r["label"] for r in rows(out)} <= set(CLASSES)
    probs = rows(tmp_path / "submission.probabilities.csv")
    assert len(probs) == 23 and list(probs[0]) == ["id", *CLASSES]
    by_id = {r["id"]: r["label"] for r in rows(out)}
    assert all(by_id[r["id"]] == max(CLASSES, key=lambda c: float(r[c])) for r in probs)


def test_images_are_prepared_as_ingest_prepared_the_training_images(project: Path, tmp_path: Path) -> None:
    """A model trained on data.image_size-resized photos records it; predict resizes the same way."""
    import onnx

    model = onnx.load(str(Paths(project).onnx_model))
    for prop in model.metadata_props:
        if prop.key == "resized_to":
            prop.value = json.dumps([32, 32, "center_crop"])
    resized_model = tmp_path / "resized.onnx"
    onnx.save(model, str(resized_model))
    src, photos = images_dir(tmp_path / "photos", 5, size=80)
    summary = predict(str(src / "*.png"), tmp_path / "p.csv", params(probabilities=True), model=resized_model)
    as_ingest = np.stack([decode_image("x", png_bytes(p), size=32, resize_mode="center_crop") for p in photos])
    expected = open_model(resized_model).predict(as_ingest, 8)
    got = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows(tmp_path / "p.csv")])
    np.testing.assert_allclose(got, expected, atol=2e-6)
    assert summary["resized"] == 0  # resized as training images were, not as a fallback
    # A model that records no resize: other sizes are resized (and counted), or refused on their rows.
    assert predict(str(src), tmp_path / "q.csv", params(), Paths(project))["resized"] == 5
    refused = predict(str(src), tmp_path / "r.csv", params(resize_mode="refuse"), Paths(project))
    assert refused["unreadable"] == 5
    assert (
        rows(tmp_path / "r.csv")[0]["error"]
        == "image is 80x80, the model takes 32x32 (predict.resize_mode is 'refuse')"
    )


def test_on_error_fail_stops_and_writes_nothing(project: Path, tmp_path: Path) -> None:
    src, _ = images_dir(tmp_path / "in", 6)
    (src / "img3.png").write_bytes(bad_image("truncated"))
    out = tmp_path / "out.csv"
    with pytest.raises(DataError, match=r"img3.png: unreadable image .*predict.on_error is 'fail'"):
        predict(str(src), out, params(on_error="fail", batch_size=2), Paths(project))
    assert list(tmp_path.glob("out*")) == []
    with pytest.raises(DataError, match=r"nowhere: no such file, directory or glob matches"):
        predict(str(tmp_path / "nowhere"), out, params(), Paths(project))


def test_cli_writes_a_submission_and_reports_bad_input_in_one_line(project: Path, tmp_path: Path) -> None:
    src, _ = images_dir(tmp_path / "test", 12)
    for i, f in enumerate(sorted(src.iterdir())):
        f.rename(src / f"{i + 1}.png")
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "stages.predict", str(src), "--format", "submission", "-o", str(tmp_path / "sub.csv")]
    proc = subprocess.run(cmd, cwd=project, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [line.split(",")[0] for line in (tmp_path / "sub.csv").read_text().splitlines()] == [
        "id",
        *map(str, range(1, 13)),
    ]
    assert json.loads(proc.stdout.splitlines()[-1])["images"] == 12
    bad = subprocess.run(
        [*cmd[:3], str(tmp_path / "missing")], cwd=project, capture_output=True, text=True, env=env, timeout=120
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("error: ")


def test_cli_variant_and_on_error_flags_reach_the_prediction(project: Path, tmp_path: Path) -> None:
    src, pixels = images_dir(tmp_path / "in", 6)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = tmp_path / "out" / "int8.csv"
    cmd = [sys.executable, "-m", "stages.predict", str(src), "-o", str(out), "--probabilities"]
    proc = subprocess.run(
        [*cmd, "--variant", "int8"], cwd=project, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    int8 = Paths(project).onnx_variant("int8")
    assert json.loads(proc.stdout.splitlines()[-1])["model"] == str(int8.relative_to(project))
    got = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows(out)])
    np.testing.assert_allclose(got, open_model(int8).predict(pixels, 8), atol=2e-6)

    (src / "img3.png").write_bytes(bad_image("truncated"))
    failed = tmp_path / "out" / "failed.csv"
    fail = [*cmd[:5], str(failed), "--on-error", "fail"]
    proc = subprocess.run(fail, cwd=project, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: img3.png: unreadable image") and "predict.on_error is 'fail'" in last
    assert not list(failed.parent.glob("failed*"))
    report = [*cmd[:5], str(failed), "--on-error", "report"]
    proc = subprocess.run(report, cwd=project, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout.splitlines()[-1])["unreadable"] == 1
    assert [r["file"] for r in rows(failed) if r["error"]] == ["img3.png"]


@pytest.mark.skipif(gpu_device_present(), reason="checks the refusal where no NVIDIA GPU is")
def test_a_gpu_provider_that_cannot_run_is_refused_unless_fallback_is_allowed(project: Path, tmp_path: Path) -> None:
    """predict.allow_fallback: false refuses to predict anywhere but on the first provider (a GPU
    machine must not silently predict on CPU); true goes on, and the summary says where it ran."""
    src, _ = images_dir(tmp_path / "in", 3)
    gpu_first = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    out = tmp_path / "out.csv"
    with pytest.raises(ProviderError, match=r"CUDAExecutionProvider not available .*no NVIDIA GPU"):
        predict(str(src), out, params(providers=gpu_first, allow_fallback=False), Paths(project))
    assert list(tmp_path.glob("out*")) == []
    summary = predict(str(src), out, params(providers=gpu_first), Paths(project))  # the default: allowed
    assert summary["provider"] == "CPUExecutionProvider" and summary["providers_requested"] == gpu_first
    assert json.loads(out.with_name("out.summary.json").read_text())["provider"] == "CPUExecutionProvider"


FLOWERS = SHARED / "data" / "flowers-photos-train.tar.gz"


def flower_photo() -> np.ndarray:
    """The first photo of the shared flowers set, cut to a multiple of 16 px each way (so that
    its JPEG blocks are the same stored upright or sideways)."""
    with tarfile.open(FLOWERS) as tar:
        member = next(m for m in tar if m.isfile() and m.name.endswith(".jpg"))
        photo = decode_image(member.name, tar.extractfile(member).read())
    return np.ascontiguousarray(photo[: photo.shape[0] // 16 * 16, : photo.shape[1] // 16 * 16])


def resized_model(project: Path, path: Path) -> Path:
    """The tiny model, recording that its training images were photos resized to 32 px by ingest."""
    import onnx

    model = onnx.load(str(Paths(project).onnx_model))
    for prop in model.metadata_props:
        if prop.key == "resized_to":
            prop.value = json.dumps([32, 32, "center_crop"])
    onnx.save(model, str(path))
    return path


@pytest.mark.skipif(not FLOWERS.exists(), reason=f"needs the shared flowers photos ({FLOWERS})")
def test_a_phone_rotated_photo_predicts_as_its_upright_twin(project: Path, tmp_path: Path) -> None:
    """A phone stores the sensor's pixels sideways and an EXIF Orientation 6 (what every viewer
    shows upright): `python -m stages.predict` gives it the label and probabilities of the same
    photo stored upright, with the model's own resize and with ingest's."""
    photo = flower_photo()
    assert photo.shape[0] != photo.shape[1]  # a turn changes what center_crop keeps
    src = tmp_path / "phone"
    src.mkdir()
    tags = Image.Exif()
    tags[0x0112] = 6
    Image.fromarray(photo).save(src / "upright.jpg", quality=95, subsampling=0)
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(photo)))  # as the sensor stored it
    sideways.save(src / "rotated.jpg", quality=95, subsampling=0, exif=tags.tobytes())
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"}
    for model in (None, resized_model(project, tmp_path / "resized.onnx")):
        out = tmp_path / f"{'native' if model is None else 'resized'}.csv"
        cmd = [sys.executable, "-m", "stages.predict", str(src), "-o", str(out), "--probabilities"]
        proc = subprocess.run(
            [*cmd, *(["--model", str(model)] if model else [])],
            cwd=project,
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        table = {r["file"]: r for r in rows(out)}
        assert set(table) == {"upright.jpg", "rotated.jpg"} and not any(r["error"] for r in table.values())
        assert table["rotated.jpg"]["label"] == table["upright.jpg"]["label"]
        p = {f: np.array([float(r[f"p_{c}"]) for c in CLASSES]) for f, r in table.items()}
        np.testing.assert_allclose(p["rotated.jpg"], p["upright.jpg"], atol=0.01)
        # What the model was given: the upright photo, far from the pixels as stored.
        as_ingest = decode_image("u", (src / "upright.jpg").read_bytes(), size=32)
        rotated = decode_image("r", (src / "rotated.jpg").read_bytes(), size=32)
        stored = np.asarray(Image.fromarray(np.asarray(sideways)).resize((32, 32)), np.int32)
        assert np.abs(rotated.astype(int) - as_ingest).mean() < 3 < np.abs(stored - as_ingest).mean()


def test_heic_and_every_accepted_format_are_predicted_like_their_png_twin(project: Path, tmp_path: Path) -> None:
    """predict reads what ingest reads (one list of suffixes): a HEIC written by pillow-heif is
    predicted as the same pixels in a PNG."""
    from tlpipe.data.images import IMAGE_SUFFIXES

    register_openers()
    src, pixels = images_dir(tmp_path / "in", 1)
    lossless = {".heic": {"quality": -1, "chroma": 444, "matrix_coefficients": 0}, ".webp": {"lossless": True}}
    for suffix in (".heic", ".heif", ".webp", ".tif", ".bmp"):
        assert suffix in IMAGE_SUFFIXES
        fmt = {".heic": "HEIF", ".heif": "HEIF", ".tif": "TIFF"}.get(suffix)
        options = lossless.get(suffix, lossless[".heic"] if suffix == ".heif" else {})
        Image.fromarray(pixels[0]).save(src / f"img1{suffix}", format=fmt, **options)
    summary = predict(str(src), tmp_path / "p.csv", params(probabilities=True), Paths(project))
    assert summary["images"] == 6 and summary["unreadable"] == 0
    table = rows(tmp_path / "p.csv")
    got = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in table])
    np.testing.assert_allclose(
        got, np.repeat(open_model(Paths(project).onnx_model).predict(pixels, 8), 6, 0), atol=2e-6
    )

"""The ingest stage on small inputs in the real formats, including every kind of bad input."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from stages import ingest
from tests.conftest import synthetic_images
from tests.inputs import bad_image, make_cifar_tarball, make_class_tree, save_image, tar_tree
from tests.test_data_pin import run_ingest
from tlpipe.config.params import ParamsError, parse_params
from tlpipe.data.dataset import CIFAR10_CLASSES, load_info, load_split
from tlpipe.paths import Paths
from tlpipe.util.errors import DataError
from tlpipe.util.hashing import sha256_file


def params_for(path: Path, source: str = "folder", **data) -> object:
    return parse_params({"seed": 7, "data": {"source": source, "path": str(path), **data}})


def assert_nothing_written(root: Path) -> None:
    data = root / "data"
    leftovers = list(data.iterdir()) if data.exists() else []
    assert leftovers == [], f"partial output left behind: {leftovers}"


def test_cifar_python_tarball(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    x_train, y_train = make_cifar_tarball(archive, per_batch=40, test=50)
    params = params_for(archive, "cifar_python", sha256=sha256_file(archive), val_fraction=0.2)
    metrics = ingest.run(params, Paths(tmp_path))

    assert metrics["counts"] == {"train": 160, "val": 40, "test": 50}
    info = load_info(tmp_path / "data" / "prepared")
    assert info.classes == list(CIFAR10_CLASSES)
    assert info.image_shape == (32, 32, 3)
    x, y = load_split(tmp_path / "data" / "prepared", "train")
    # Pixels survive the channel-major pickle layout unchanged: every prepared image is a source image.
    source = {img.tobytes(): label for img, label in zip(x_train, y_train, strict=True)}
    assert all(source[img.tobytes()] == label for img, label in zip(x, y, strict=True))
    # Validation is stratified: 4 of each class out of 20.
    _, yv = load_split(tmp_path / "data" / "prepared", "val")
    assert np.bincount(yv).tolist() == [4] * 10


def test_cifar_checksum_mismatch_refuses_before_unpickling(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_cifar_tarball(archive, per_batch=10, test=10)
    with pytest.raises(DataError, match="SHA-256 checksum mismatch: expected 6d958be0"):
        ingest.run(params_for(archive, "cifar_python"), Paths(tmp_path))
    assert_nothing_written(tmp_path)


def test_cifar_label_out_of_range(tmp_path: Path) -> None:
    archive = tmp_path / "c.tar.gz"
    make_cifar_tarball(archive, per_batch=10, test=10, bad_label=True)
    with pytest.raises(DataError, match=r"data_batch_3: label 10 out of range 0..9"):
        ingest.run(params_for(archive, "cifar_python", sha256=sha256_file(archive)), Paths(tmp_path))
    assert_nothing_written(tmp_path)


def test_pickle_with_code_is_refused_even_with_matching_checksum(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    import pickle

    archive = tmp_path / "c.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("data_batch_1", "test_batch"):
            blob = pickle.dumps({b"data": Evil(), b"labels": [0]})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(DataError, match="refusing to unpickle builtins.print"):
        ingest.run(params_for(archive, "cifar_python", sha256=sha256_file(archive)), Paths(tmp_path))


def test_class_folder_tarball_carves_val_and_test(tmp_path: Path) -> None:
    tree = make_class_tree(tmp_path / "src", list(CIFAR10_CLASSES)[::-1], {"train": 10}, fmt="jpg")
    archive = tar_tree(tree, tmp_path / "imgs.tar.gz")
    metrics = ingest.run(params_for(archive, val_fraction=0.2, test_fraction=0.2), Paths(tmp_path / "p"))
    assert metrics["counts"] == {"train": 60, "val": 20, "test": 20}
    prepared = tmp_path / "p" / "data" / "prepared"
    # CIFAR-10's own class order, whatever order the folders came in.
    assert load_info(prepared).classes == list(CIFAR10_CLASSES)
    manifest = (prepared / "manifest.csv").read_text().splitlines()
    assert manifest[0] == "split,index,label,class_name,sha256,source"
    assert len(manifest) == 101
    assert json.loads((tmp_path / "p" / "reports" / "ingest" / "metrics.json").read_text())["counts"]["val"] == 20


def test_folder_archive_checksum_mismatch_refuses_before_decoding_any_image(tmp_path: Path) -> None:
    tree = make_class_tree(tmp_path / "src", ["cat", "dog"], {"train": 4})
    # An image no decoder accepts: reaching it would fail with another error than the checksum's.
    (tree / "train" / "cat" / "0_bomb.png").write_bytes(bad_image("huge"))
    archive = tar_tree(tree, tmp_path / "imgs.tar.gz")
    wrong = "0" * 64
    with pytest.raises(DataError) as refused:
        ingest.run(params_for(archive, sha256=wrong), Paths(tmp_path / "p"))
    assert str(refused.value) == (
        f"{archive}: SHA-256 checksum mismatch: expected {wrong}, got {sha256_file(archive)}. "
        "The file is corrupt, truncated or not the one params name (data.sha256)."
    )
    assert_nothing_written(tmp_path / "p")
    assert not (tmp_path / "p" / "reports").exists()


def test_splits_are_deterministic_from_seed(tmp_path: Path) -> None:
    tree = make_class_tree(tmp_path / "src", ["a", "b", "c"], {"train": 20})

    def val_of(root: Path, seed: int) -> np.ndarray:
        p = parse_params({"seed": seed, "data": {"source": "folder", "path": str(tree)}})
        ingest.run(p, Paths(root))
        return np.asarray(load_split(root / "data" / "prepared", "val")[0])

    first, again, other = val_of(tmp_path / "1", 1), val_of(tmp_path / "2", 1), val_of(tmp_path / "3", 2)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_source_test_split_and_sorted_own_classes_with_limits(tmp_path: Path) -> None:
    tree = make_class_tree(tmp_path / "src", ["zebra", "ant", "moth"], {"train": 20, "test": 6})
    params = params_for(tree, limit={"train": 30, "test": 9})
    metrics = ingest.run(params, Paths(tmp_path))
    assert metrics["counts"] == {"train": 30, "val": 6, "test": 9}
    prepared = tmp_path / "data" / "prepared"
    assert load_info(prepared).classes == ["ant", "moth", "zebra"]
    for split in ("train", "val", "test"):
        counts = np.bincount(load_split(prepared, split)[1])
        assert counts.max() - counts.min() == 0, f"{split} not stratified: {counts}"


def test_grayscale_and_rgba_are_converted_or_refused(tmp_path: Path) -> None:
    tree = make_class_tree(tmp_path / "src", ["a", "b"], {"train": 10})
    rgb = synthetic_images(1, 16, np.array([0]), seed=5)[0]
    save_image(tree / "train" / "a" / "gray.png", rgb, mode="L")
    save_image(tree / "train" / "b" / "alpha.png", rgb, mode="RGBA")
    ingest.run(params_for(tree), Paths(tmp_path / "ok"))
    info = load_info(tmp_path / "ok" / "data" / "prepared")
    assert info.source["converted_to_rgb"] == {"L": 1, "RGBA": 1}

    with pytest.raises(DataError, match=r"train/a/gray.png: image mode L is not RGB and data.color_mode is 'refuse'"):
        ingest.run(params_for(tree, color_mode="refuse"), Paths(tmp_path / "no"))
    assert_nothing_written(tmp_path / "no")


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("unreadable", r"train/b/0003.png: unreadable image"),
        ("other_size", r"train/b/0001.png: image is 20x20, expected 16x16"),
        ("empty_class", r"class folder train/empty is empty"),
        ("missing_in_split", r"class folder\(s\) \['b'\] missing from split 'test'"),
    ],
)
def test_bad_class_folders(tmp_path: Path, breakage: str, message: str) -> None:
    tree = make_class_tree(tmp_path / "src", ["a", "b"], {"train": 6, "test": 2})
    if breakage == "unreadable":
        (tree / "train" / "b" / "0003.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    elif breakage == "other_size":
        save_image(tree / "train" / "b" / "0001.png", synthetic_images(1, 20, np.array([1]))[0])
    elif breakage == "empty_class":
        (tree / "train" / "empty").mkdir()
        (tree / "test" / "empty").mkdir()
    elif breakage == "missing_in_split":
        for f in (tree / "test" / "b").iterdir():
            f.unlink()
        (tree / "test" / "b").rmdir()
    archive = tar_tree(tree, tmp_path / "src.tar.gz")
    for source in (tree, archive):
        with pytest.raises(DataError, match=message):
            ingest.run(params_for(source), Paths(tmp_path / "out"))
        assert_nothing_written(tmp_path / "out")


def test_mixed_size_photos_are_resized_when_data_image_size_is_set(tmp_path: Path) -> None:
    """Own datasets (photos) come in many sizes: data.image_size resizes them as they are read."""
    tree = make_class_tree(tmp_path / "src", ["a", "b"], {"train": 10})
    # A wide JPEG: red | green | blue thirds. center_crop keeps the green middle, stretch all three.
    wide = np.zeros((40, 120, 3), np.uint8)
    wide[:, :40, 0] = wide[:, 40:80, 1] = wide[:, 80:, 2] = 250
    save_image(tree / "train" / "a" / "wide.jpg", wide)
    save_image(tree / "train" / "b" / "tall.png", synthetic_images(1, 64, np.array([1]))[0][:, :48])

    mixed = r"image is 120x40, expected 16x16 .*set data.image_size.*python -m stages.presets photos"
    with pytest.raises(DataError, match=mixed):
        ingest.run(params_for(tree), Paths(tmp_path / "native"))
    assert_nothing_written(tmp_path / "native")

    for mode in ("center_crop", "stretch"):
        root = tmp_path / mode
        ingest.run(params_for(tree, image_size=24, resize_mode=mode, val_fraction=0.1, test_fraction=0.1), Paths(root))
        prepared = root / "data" / "prepared"
        info = load_info(prepared)
        assert tuple(info.image_shape) == (24, 24, 3) and info.source["resized_to"] == [24, 24, mode]
        manifest = (prepared / "manifest.csv").read_text().splitlines()
        split, index = next(line.split(",")[:2] for line in manifest if "wide.jpg" in line)
        img = np.asarray(load_split(prepared, split)[0][int(index)], np.int32)
        middle, left = img[12, 12], img[12, 1]
        assert middle[1] > 200 and middle[0] < 50, middle  # green centre either way
        if mode == "center_crop":
            assert left[1] > 200, left  # the red third was cut off
        else:
            assert left[0] > 200 and left[1] < 50, left  # the red third squeezed in


def test_data_image_size_is_refused_for_cifar_sources(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    make_cifar_tarball(archive, per_batch=10, test=10)
    params = params_for(archive, "cifar_python", sha256=sha256_file(archive), image_size=64)
    with pytest.raises(DataError, match=r"data.image_size=64 applies to image-file sources \(folder, labels_file\)"):
        ingest.run(params, Paths(tmp_path / "out"))
    assert_nothing_written(tmp_path / "out")
    with pytest.raises(ParamsError, match=r"data.image_size: Input should be greater than or equal to 8 \(got 4\)"):
        parse_params({"data": {"source": "folder", "path": "x", "image_size": 4}})


def test_truncated_archive(tmp_path: Path) -> None:
    tree = make_class_tree(tmp_path / "src", ["a", "b"], {"train": 20})
    archive = tar_tree(tree, tmp_path / "src.tar.gz")
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"src.tar.gz: corrupt or truncated archive"):
        ingest.run(params_for(archive), Paths(tmp_path / "out"))
    assert_nothing_written(tmp_path / "out")


def test_path_traversal_member_is_refused(tmp_path: Path) -> None:
    tree = make_class_tree(tmp_path / "src", ["a", "b"], {"train": 4})
    archive = tar_tree(tree, tmp_path / "evil.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree / "train", arcname="train")
        blob = b"owned"
        info = tarfile.TarInfo("../../escape.png")
        info.size = len(blob)
        tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(DataError, match=r"refusing unsafe archive member '../../escape.png'"):
        ingest.run(params_for(archive), Paths(tmp_path / "out"))
    assert not (tmp_path / "escape.png").exists()
    assert_nothing_written(tmp_path / "out")


def test_params_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"data.val_fractoin: unknown key"):
        parse_params({"data": {"val_fractoin": 0.1}})
    with pytest.raises(ParamsError, match=r"data.val_fraction: Input should be greater than 0 \(got -0.2\)"):
        parse_params({"data": {"val_fraction": -0.2}})
    with pytest.raises(ParamsError, match=r"data.path is required when data.source is 'folder'"):
        parse_params({"data": {"source": "folder"}})
    with pytest.raises(ParamsError, match=r"seed: Input should be a valid integer"):
        parse_params({"seed": "abc"})


def test_cli_reports_bad_params_and_exits_nonzero(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("seed: 1\nbackbone: mobilenetv2\ndata:\n  sourse: folder\n")
    proc = run_ingest(tmp_path)
    assert proc.returncode == 1
    assert "params.yaml: invalid parameters:" in proc.stderr
    assert "data.sourse: unknown key" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert_nothing_written(tmp_path)


def prepared_image(root: Path, name: str) -> np.ndarray:
    """The prepared pixels of the source image `name` (found through the manifest)."""
    prepared = root / "data" / "prepared"
    manifest = (prepared / "manifest.csv").read_text().splitlines()
    split, index = next(line.split(",")[:2] for line in manifest if line.endswith(f"/{name}"))
    return np.asarray(load_split(prepared, split)[0][int(index)], np.int32)


def photo_like(height: int, width: int) -> np.ndarray:
    """An asymmetric picture (a gradient, a dark top-left corner): wrong when turned or flipped."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.stack([255 * xx / width, 255 * yy / height, np.full_like(xx, 90, dtype=float)], axis=-1)
    img[: height // 3, : width // 3] = 20
    return img.astype(np.uint8)


def test_a_phone_rotated_jpeg_is_prepared_as_its_upright_twin(tmp_path: Path) -> None:
    """A phone stores the sensor's pixels sideways with EXIF Orientation 6: ingest turns them upright."""
    from PIL import Image

    tree = make_class_tree(tmp_path / "src", ["a", "b"], {"train": 6})
    upright = photo_like(48, 64)
    tags = Image.Exif()
    tags[0x0112] = 6
    Image.fromarray(upright).save(tree / "train" / "a" / "upright.jpg", quality=95, subsampling=0)
    sideways = Image.fromarray(np.ascontiguousarray(np.rot90(upright)))  # as the sensor stored it
    sideways.save(tree / "train" / "a" / "rotated.jpg", quality=95, subsampling=0, exif=tags.tobytes())
    ingest.run(params_for(tree, image_size=16, val_fraction=0.2), Paths(tmp_path / "out"))
    twin, rotated = prepared_image(tmp_path / "out", "upright.jpg"), prepared_image(tmp_path / "out", "rotated.jpg")
    assert np.abs(rotated - twin).max() <= 6, np.abs(rotated - twin).max()
    assert np.abs(np.rot90(rotated) - twin).mean() > 40  # left as stored it would be far off


def test_every_accepted_format_heic_included_is_ingested_from_class_folders(tmp_path: Path) -> None:
    """The folder source reads every suffix predict reads: HEIC (written by pillow-heif), WebP,
    TIFF, BMP and GIF beside PNG and JPEG, each prepared as the pixels it was written from."""
    from PIL import Image

    from tlpipe.data.images import IMAGE_SUFFIXES, register_openers

    register_openers()
    tree = make_class_tree(tmp_path / "src", ["a", "b"], {"train": 4})
    pictures = {}
    for i, suffix in enumerate(IMAGE_SUFFIXES):
        pictures[suffix] = photo_like(16, 16)
        pictures[suffix][:5, :5] = 20 + 20 * i  # each its own image (exact duplicates are dropped)
        lossless_heif = {"quality": -1, "chroma": 444, "matrix_coefficients": 0}  # RGB kept as RGB
        extra = {".heic": lossless_heif, ".heif": lossless_heif, ".webp": {"lossless": True}}.get(suffix, {})
        fmt = {".heic": "HEIF", ".heif": "HEIF", ".jpg": "JPEG", ".tif": "TIFF"}.get(suffix)
        options = {"quality": 95, **extra} if fmt != "TIFF" else {}
        Image.fromarray(pictures[suffix]).save(tree / "train" / "b" / f"picture{suffix}", format=fmt, **options)
    metrics = ingest.run(params_for(tree, val_fraction=0.2), Paths(tmp_path / "out"))
    assert sum(metrics["counts"].values()) == 2 * 4 + len(IMAGE_SUFFIXES)
    for suffix, picture in pictures.items():
        error = np.abs(prepared_image(tmp_path / "out", f"picture{suffix}") - picture)
        if suffix in (".jpg", ".jpeg", ".gif"):  # lossy, or 256 colours
            assert error.mean() <= 4, (suffix, error.mean())
        else:
            assert error.max() == 0, suffix

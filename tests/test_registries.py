"""Where the project grows: a new data source is one reader plus one registry entry, a new export
variant one builder plus one registry entry. Both registered here, from the test, and run through the
real ingest and export stages (and the params schema, predict's choices and the benchmark's list)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from stages import benchmark, export, ingest
from stages import predict as predict_cli
from tests.tiny_models import tiny_params, tiny_project
from tlpipe.config.base import ParamsError
from tlpipe.config.params import parse_params, with_overrides
from tlpipe.data.dataset import load_info, load_split
from tlpipe.data.raw import RawDataset, RawSplit
from tlpipe.data.sources import SOURCES, Source, register_source
from tlpipe.export.variants import VARIANTS, Job, Variant, register_variant
from tlpipe.paths import Paths

TOY_CLASSES = ["circle", "square"]


def read_toy(location: Path | str, data) -> RawDataset:
    """The toy source: `location` is a directory holding seed.txt; images are seeded noise."""
    rng = np.random.default_rng(int((Path(location) / "seed.txt").read_text()))

    def split(n: int) -> RawSplit:
        labels = np.arange(n, dtype=np.int64) % len(TOY_CLASSES)
        images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        return RawSplit(images, labels, [f"toy/{i}" for i in range(n)])

    return RawDataset(TOY_CLASSES, {"train": split(40), "test": split(10)}, {"kind": "toy", "seed_file": "seed.txt"})


def build_toy(job: Job, out: Path) -> None:
    """The toy variant: the float32 model itself, byte for byte."""
    shutil.copyfile(job.fp32_path, out)


@pytest.fixture
def toy_source() -> Iterator[None]:
    register_source("toy", Source(read_toy, about="toy noise"))
    yield
    del SOURCES["toy"]


@pytest.fixture
def toy_variant() -> Iterator[None]:
    register_variant("toy", Variant(build_toy))
    yield
    del VARIANTS["toy"]


def test_a_registered_source_is_a_data_source_value_and_ingest_reads_it(tmp_path: Path, toy_source) -> None:
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "seed.txt").write_text("3")
    params = parse_params({"seed": 1, "data": {"source": "toy", "path": "toy", "val_fraction": 0.25}})
    metrics = ingest.run(params, Paths(tmp_path))

    info = load_info(tmp_path / "data" / "prepared")
    assert info.classes == TOY_CLASSES and list(info.image_shape) == [8, 8, 3]
    assert info.source["kind"] == "toy" and info.source["path"] == "toy" and info.source["seed_file"] == "seed.txt"
    assert metrics["counts"] == {"train": 30, "val": 10, "test": 10}
    x, y = load_split(tmp_path / "data" / "prepared", "test")
    toy_test = read_toy(tmp_path / "toy", None).splits["test"]
    assert sorted(map(bytes, x)) == sorted(map(bytes, toy_test.images)) and sorted(y) == sorted(toy_test.labels)
    # It is a local source: a URL is refused, as for every source that does not download.
    with pytest.raises(ParamsError, match=r"only data.source 'keras' downloads, 'toy' reads a local path"):
        parse_params({"data": {"source": "toy", "path": "https://example.com/toy"}})


def test_an_unregistered_source_or_variant_is_a_params_error() -> None:
    with pytest.raises(ParamsError, match=r"data.source: Value error, unknown data source 'toy'"):
        parse_params({"data": {"source": "toy", "path": "x"}})
    with pytest.raises(ParamsError, match=r"export.variants: Value error, unknown export variant 'toy'"):
        parse_params({"export": {"variants": ["toy"]}})
    with pytest.raises(ParamsError, match=r"predict.variant: Value error, unknown export variant 'toy'"):
        parse_params({"predict": {"variant": "toy"}})
    with pytest.raises(ValueError, match="already registered"):
        register_source("folder", SOURCES["folder"])
    with pytest.raises(ValueError, match="already registered"):
        register_variant("fp32", VARIANTS["fp16"])


def test_a_registered_variant_is_exported_scored_benchmarked_and_predictable(
    tmp_path_factory, tmp_path: Path, toy_variant
) -> None:
    project = tiny_project(tmp_path_factory)
    root = tmp_path / "p"
    shutil.copytree(project / "data" / "prepared", root / "data" / "prepared")
    (root / "models").mkdir(parents=True)
    shutil.copy(project / "models" / "model.keras", root / "models" / "model.keras")
    params = with_overrides(tiny_params(), export={"variants": ["toy"]}, predict={"variant": "toy"})
    paths = Paths(root)

    metrics = export.run(params, paths)
    assert set(metrics["variants"]) == {"fp32", "toy"}
    assert metrics["variants"]["toy"]["accuracy_drop_points"] == 0 and metrics["variants"]["toy"]["max_abs_diff"] == 0
    assert paths.onnx_variant("toy") == root / "models" / "variants" / "model.toy.onnx"
    assert paths.onnx_variant("toy").read_bytes() == paths.onnx_model.read_bytes()
    assert paths.variant_files() == {"toy": paths.onnx_variant("toy")}
    assert set(benchmark.onnx_models(paths)) == {"onnx-fp32", "onnx-toy"}
    assert predict_cli.parse_args(["x", "--variant", "toy"]).variant == "toy"
    assert json.loads((paths.reports("export") / "metrics.json").read_text())["variants"]["toy"]["size_mb"] > 0

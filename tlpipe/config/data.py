"""params.yaml section `data`: the source ingest reads and how it splits it."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from tlpipe.config.base import Section


class SplitLimits(Section):
    """Optional stratified cap on the number of images per split, for quick runs."""

    train: int | None = Field(None, gt=0)
    val: int | None = Field(None, gt=0)
    test: int | None = Field(None, gt=0)


class LabelsParams(Section):
    """The labels_file source: images named in a CSV/TSV of image id and label (tlpipe.data.labelled).

    Kaggle's CIFAR-10 layout by default: `train/<id>.png` and `trainLabels.csv` of `id,label`.
    Paths are inside data.path (a directory, or an archive whose inner .7z/.zip/.tar are opened).
    """

    # The labels file (.csv comma-separated, .tsv tab-separated), with a header row.
    file: str = Field("trainLabels.csv", min_length=1)
    # The folder the ids name images in; `.` for the top of data.path.
    images: str = Field("train", min_length=1)
    id_column: str = Field("id", min_length=1)
    label_column: str = Field("label", min_length=1)
    # The image of id `7` is `7<image_suffix>`; an id that already ends in an image suffix (a
    # `filename,label` file: id_column=filename) names its file as it is.
    image_suffix: str = Field(".png", pattern=r"^\.[A-Za-z0-9]+$")
    # Images in the folder that the labels file does not name: an error, or skipped (and counted).
    unlisted: Literal["error", "skip"] = "error"
    # Class order ([]: CIFAR-10's order when the labels are its classes, sorted otherwise); a label
    # outside a given list is an error naming its line.
    classes: list[str] = []
    # A second labels file for a labelled test split, its images in test_images (empty: the test
    # split is carved from train, data.test_fraction).
    test_file: str | None = None
    test_images: str = Field("test", min_length=1)

    @field_validator("classes")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or any(not c.strip() for c in v):
            raise ValueError(f"classes must be distinct, non-empty names, got {v}")
        return v


class DataParams(Section):
    section: ClassVar[str] = "data"

    # A name in the registry of sources (tlpipe.data.sources):
    # keras: the CIFAR-10 python tarball downloaded from data.path (a URL) by Keras's downloader;
    # cifar_python: that tarball on disk; folder: <split>/<class>/<image> as a directory
    # or a .tar/.tar.gz/.tgz/.zip/.7z archive; labels_file: images named in a labels file (`labels`).
    source: str = "keras"
    # The data itself, and a DVC dependency of ingest (dvc.yaml: ${data.path}), so changed data
    # reruns ingest. Relative paths are from the project root. keras: the URL (default: the source's,
    # tlpipe.data.sources.CIFAR10_URL).
    path: str | None = None
    # Expected SHA-256 of the file at sha256_path, checked before anything in it is parsed. The pin
    # belongs to that path: it holds while data.path names the same path (both resolved from the
    # project root), and another data.path has no pin (tlpipe.data.raw.pinned_sha256), so
    # `-S data.path=...` alone never checks your data against another file's checksum. Empty
    # sha256_path: the pin is data.path's, whatever it names. cifar_python and keras default to the
    # published CIFAR-10 checksum when no pin holds.
    sha256: str | None = None
    sha256_path: str | None = None
    val_fraction: float = Field(0.1, gt=0, lt=1)
    # Only used when the source has no test split of its own.
    test_fraction: float = Field(0.1, gt=0, lt=1)
    limit: SplitLimits = SplitLimits()
    # Grayscale / RGBA / palette images: convert to RGB, or refuse them.
    color_mode: Literal["convert", "refuse"] = "convert"
    # Class-folder images of mixed sizes (most photo datasets): resize each to image_size ×
    # image_size as it is decoded. null keeps the native size, and then every image must share
    # one size. The model resizes again to the backbone's size, so this only sets what is
    # stored: keep it small (a few times the detail the classes need), memory is N × size² × 3 bytes.
    image_size: int | None = Field(None, ge=8, le=1024)
    # center_crop: scale the shorter side to image_size, then cut the middle square (keeps the
    # aspect ratio); stretch: scale both sides to image_size (keeps everything, distorts).
    resize_mode: Literal["center_crop", "stretch"] = "center_crop"
    labels: LabelsParams = LabelsParams()

    @field_validator("source")
    @classmethod
    def _registered(cls, v: str) -> str:
        from tlpipe.data.sources import get_source

        get_source(v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _default_path(cls, raw: object) -> object:
        from tlpipe.data.sources import SOURCES

        if isinstance(raw, dict) and raw.get("path") is None:
            source = SOURCES.get(raw.get("source", "keras"))
            if source is not None and source.default_path:
                return {**raw, "path": source.default_path}
        return raw

    @model_validator(mode="after")
    def _consistent(self) -> DataParams:
        if not (self.path or "").strip():
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        from tlpipe.data.sources import get_source, source_names

        source = get_source(self.source)
        is_url = self.path.startswith(("http://", "https://"))
        if source.downloads and not is_url:
            example = f" (e.g. {source.default_path})" if source.default_path else ""
            raise ValueError(
                f"data.source {self.source!r} downloads from data.path, which must be a URL{example}, got {self.path!r}"
            )
        if not source.downloads and is_url:
            downloading = " or ".join(repr(n) for n in source_names(lambda s: s.downloads))
            raise ValueError(
                f"data.path is a URL ({self.path}); only data.source "
                f"{downloading} downloads, {self.source!r} reads a local path"
            )
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"data.val_fraction + data.test_fraction must be < 1, got {self.val_fraction} + {self.test_fraction}"
            )
        return self

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 64 or any(c not in "0123456789abcdef" for c in v.lower())):
            raise ValueError(f"expected a 64-character hex SHA-256, got {v!r}")
        return v.lower() if v else v

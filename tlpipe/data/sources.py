"""The registry of data sources: `data.source` names one, ingest reads it.

A source is a module with one reader, `read(location, data) -> RawDataset` (tlpipe.data.raw), plus
one entry here; params validation (data.source, data.path) and ingest ask this table, nothing else
names a source. A test or a plugin adds one with `register_source`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tlpipe.data import cifar, folders, labelled
from tlpipe.data.raw import RawDataset

if TYPE_CHECKING:
    from tlpipe.config.data import DataParams

# Where keras.datasets.cifar10 downloads from (the `keras` source's data.path).
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@dataclass(frozen=True)
class Source:
    # The reader: (data.path resolved from the project root, or the URL for a download; the data params).
    read: Callable[[Path | str, DataParams], RawDataset]
    # data.path is a URL the reader downloads from (local sources refuse URLs), default_path when unset.
    downloads: bool = False
    default_path: str | None = None
    # Decodes image files of any size: data.image_size may resize them (else images keep their size).
    image_files: bool = False
    # What it is and the size its images come in, for messages (ingest's data.image_size check).
    about: str = ""
    native_size: str = "size"


SOURCES: dict[str, Source] = {
    "keras": Source(
        cifar.read_download, downloads=True, default_path=CIFAR10_URL, about="CIFAR-10", native_size="32×32"
    ),
    "cifar_python": Source(cifar.read_file, about="CIFAR-10", native_size="32×32"),
    "folder": Source(folders.read_class_folders, image_files=True, about="class folders"),
    "labels_file": Source(labelled.read_labelled, image_files=True, about="a labels file"),
}


def register_source(name: str, source: Source) -> None:
    """Add a source under `name` (data.source: <name>); a name already taken is an error."""
    if name in SOURCES:
        raise ValueError(f"data source {name!r} is already registered")
    SOURCES[name] = source


def source_names(where: Callable[[Source], bool] = lambda s: True) -> list[str]:
    return [name for name, source in SOURCES.items() if where(source)]


def get_source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise ValueError(f"unknown data source {name!r}; expected one of {', '.join(source_names())}") from None

"""What stages.predict reads: image files from a directory, an archive or a glob, decoded the way
ingest decoded the training images, in batches prepared on helper threads while the model runs.

Memory is bounded by the batches in flight (`predict.queue_batches`), never by the number of
images: a directory or glob is listed (names only), an archive is read member by member
(tlpipe.data.archives: a .7z through a bounded queue, an archive inside an archive spooled to disk).
"""

from __future__ import annotations

import glob
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from tlpipe.data.archives import is_archive_name, iter_entries
from tlpipe.data.images import IMAGE_SUFFIXES, decode_image, prepare_image
from tlpipe.util.errors import DataError

Item = tuple[str, bytes | None, str | None]  # name, file bytes, or the error that kept them from being read
Decoder = Callable[[str, bytes], tuple[np.ndarray, bool]]  # name, bytes → pixels, whether resized


@dataclass
class Inputs:
    items: Iterator[Item]
    total: int | None  # known up front for a directory or a glob (an archive is streamed unlisted)


@dataclass
class Batch:
    names: list[str]
    pixels: np.ndarray  # uint8 n×H×W×3, the readable images only
    readable: np.ndarray  # bool per name
    errors: dict[int, str] = field(default_factory=dict)  # position in names → why unreadable
    resized: int = 0


def natural_key(name: str) -> list[Any]:
    """`img2` before `img10`, and Kaggle's `test/2.png` before `test/10.png`."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def is_image_name(name: str | PurePosixPath) -> bool:
    return str(name).lower().endswith(IMAGE_SUFFIXES)


def _read_files(files: list[tuple[str, Path]]) -> Iterator[Item]:
    for name, path in files:
        try:
            yield name, path.read_bytes(), None
        except OSError as err:
            yield name, None, f"unreadable file ({err.strerror})"


def open_inputs(source: str, folder: str | None = None) -> Inputs:
    """The image files of `source` (a directory, an archive, or a glob pattern), in natural order
    for a directory or glob and in archive order for an archive; `folder` picks a folder inside."""
    path = Path(source).expanduser()
    inner = PurePosixPath(folder.strip("/")) if folder and folder.strip("/") not in ("", ".") else None
    if path.is_dir():
        root = path / inner if inner else path
        if not root.is_dir():
            raise DataError(f"{root}: no such folder in {path}")
        files = [
            (Path(d).joinpath(f).relative_to(path).as_posix(), Path(d) / f)
            for d, _, names in os.walk(root)
            for f in names
            if is_image_name(f)
        ]
        files.sort(key=lambda t: natural_key(t[0]))
        return Inputs(_read_files(files), len(files))
    if path.is_file():
        if not is_archive_name(path.name):
            if is_image_name(path.name):
                return Inputs(_read_files([(str(path), path)]), 1)
            raise DataError(f"{path}: neither an image, a directory nor a .tar/.tar.gz/.zip/.7z archive")

        def keep(member: PurePosixPath) -> bool:
            return is_image_name(member) and (inner is None or inner in member.parents)

        entries = iter_entries(path, keep, nested=True)
        return Inputs(((str(n), data, None) for n, is_dir, data in entries if not is_dir), None)
    if glob.has_magic(source):
        matches = sorted((m for m in glob.glob(source, recursive=True) if is_image_name(m)), key=natural_key)
        return Inputs(_read_files([(m, Path(m)) for m in matches]), len(matches))
    raise DataError(f"{source}: no such file, directory or glob matches")


def image_decoder(shape: tuple[int, int], resized_to: list | None, resize_mode: str) -> Decoder:
    """Bytes → H×W×3 uint8 pixels as the model takes them, and whether a resize was needed.

    Prepared by ingest's own function (tlpipe.data.images.prepare_image: decoded, turned upright,
    converted to RGB, resized). `resized_to` ([size, size, mode], from the model's metadata) is
    what ingest did to every training image: done here the same way. Without it, training images
    had the model's size already; other sizes are resized with `resize_mode`, or refused."""
    height, width = shape

    def decode(name: str, data: bytes) -> tuple[np.ndarray, bool]:
        if resized_to:
            size, mode = int(resized_to[0]), str(resized_to[2])
            return decode_image(name, data, size=size, resize_mode=mode), False
        img, resized = prepare_image(name, data, shape=shape, resize_mode=resize_mode)
        if img.shape[:2] != (height, width):  # resize_mode 'refuse' leaves other sizes as they are
            raise DataError(
                f"{name}: image is {img.shape[1]}x{img.shape[0]}, the model takes {width}x{height} "
                "(predict.resize_mode is 'refuse')"
            )
        return img, resized

    return decode


def _one(decode: Decoder, shape: tuple[int, int], item: Item) -> tuple[np.ndarray | None, bool, str]:
    """(pixels, resized, "") for a readable image, (None, False, why) for another."""
    name, data, error = item
    if error is not None or data is None:
        return None, False, error or "unreadable file"
    try:
        img, resized = decode(name, data)
    except DataError as err:
        message = str(err)
        return None, False, message[len(name) + 2 :] if message.startswith(f"{name}: ") else message
    if img.shape != (*shape, 3):  # a model whose metadata disagrees with its input
        return None, False, f"decodes to {img.shape}, the model takes {(*shape, 3)}"
    return img, resized, ""


def batches(items: Iterator[Item], decode: Decoder, shape: tuple[int, int], size: int, threads: int) -> Iterator[Batch]:
    """Decoded batches of `size` names (the last one shorter); unreadable images stay in `names`
    with their error, so that every input gets a row."""
    pool = ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads > 1 else None
    try:
        while True:
            chunk = [item for _, item in zip(range(size), items, strict=False)]
            if not chunk:
                return
            decoded = (
                list(pool.map(lambda it: _one(decode, shape, it), chunk))
                if pool
                else [_one(decode, shape, it) for it in chunk]
            )
            good = [img for img, _, _ in decoded if img is not None]
            yield Batch(
                names=[name for name, _, _ in chunk],
                pixels=np.stack(good) if good else np.empty((0, *shape, 3), np.uint8),
                readable=np.array([img is not None for img, _, _ in decoded], bool),
                errors={i: why for i, (img, _, why) in enumerate(decoded) if img is None},
                resized=sum(resized for _, resized, _ in decoded),
            )
    finally:
        if pool:
            pool.shutdown(cancel_futures=True)


def prefetch(iterator: Iterator[Any], depth: int) -> Iterator[Any]:
    """`iterator`'s items produced on a helper thread, at most `depth` ahead of the consumer;
    an error there is raised here, and a consumer that stops early stops the helper."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in iterator:
                if stop.is_set():
                    return
                put(item)
            put(done)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, raised there
            put(err)

    worker = threading.Thread(target=produce, name="predict-reader", daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=10)

"""Image files decoded on every core, into a pool on disk: ingest's memory does not grow with the
number of images.

Files arrive in the order the source yields them (a directory walk, an archive's member order);
a thread pool decodes them (Pillow and hashlib release the GIL while they work) with a bounded
number of files in flight, and each decoded image is appended to an unnamed temporary .npy file
as it completes, in arrival order. A split is then a `PoolView`: rows of that file in the split's
own order, read back a chunk at a time when the shards are written. Nothing is kept but the
pixel hashes; the temporary file disappears with the process, whatever happens.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np

from tlpipe.util.errors import DataError

_SCRATCH: contextvars.ContextVar[Path | None] = contextvars.ContextVar("tlpipe_decode_scratch", default=None)
_IN_FLIGHT_PER_THREAD = 8  # files read but not yet decoded, per decoding thread


@contextmanager
def scratch_dir(directory: Path) -> Iterator[None]:
    """Where decoded images are pooled while ingest runs (beside its outputs: the system temporary
    folder may be a small RAM disk). A folder made for it goes again if nothing else was put there."""
    made = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    token = _SCRATCH.set(directory)
    try:
        yield
    finally:
        _SCRATCH.reset(token)
        if made and not any(directory.iterdir()):
            directory.rmdir()


def decode_threads() -> int:
    """One decoding thread per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class ImagePool:
    """Decoded images of one shape, appended as rows of a temporary .npy file; their hashes in memory."""

    def __init__(self) -> None:
        self.shape: tuple[int, ...] | None = None
        self.hashes: list[str] = []
        self.first: str = ""
        self._file: IO[bytes] | None = None
        self._offset = 0

    def __len__(self) -> int:
        return len(self.hashes)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 0

    def append(self, origin: str, img: np.ndarray, digest: str) -> int:
        if self.shape is None:
            self.shape, self.first = img.shape, origin
            self._file = tempfile.TemporaryFile(prefix="tlpipe-decoded-", suffix=".npy", dir=_SCRATCH.get())
            # A .npy header for a 1-D placeholder: the rows are read back by offset, never by numpy.load.
            np.lib.format.write_array_header_1_0(
                self._file, {"descr": "|u1", "fortran_order": False, "shape": (0, *img.shape)}
            )
            self._offset = self._file.tell()
        elif img.shape != self.shape:
            h, w = img.shape[:2]
            raise DataError(
                f"{origin}: image is {w}x{h}, expected {self.shape[1]}x{self.shape[0]} like {self.first}; "
                "all images must share one size: set data.image_size to resize them as they are read "
                "(photos: `python -m stages.presets photos`), or resize them first"
            )
        assert self._file is not None
        self._file.write(np.ascontiguousarray(img, np.uint8).tobytes())
        self.hashes.append(digest)
        return len(self.hashes) - 1

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The images at `rows` (any order), read from the file."""
        assert self._file is not None or len(rows) == 0
        out = np.empty((len(rows), *(self.shape or (0, 0, 3))), np.uint8)
        if len(rows):
            self._file.flush()
            fd = self._file.fileno()
            for k, r in enumerate(rows):
                buf = os.pread(fd, self.row_bytes, self._offset + int(r) * self.row_bytes)
                out[k] = np.frombuffer(buf, np.uint8).reshape(self.shape)
        return out

    def view(self, rows: list[int]) -> PoolView:
        return PoolView(self, np.asarray(rows, np.int64))


class PoolView:
    """A split's images as rows of an `ImagePool`, in the split's order; indexing gives another view."""

    def __init__(self, pool: ImagePool, rows: np.ndarray) -> None:
        self.pool, self.rows = pool, rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *(self.pool.shape or (0, 0, 3)))

    @property
    def hashes(self) -> list[str]:
        return [self.pool.hashes[r] for r in self.rows]

    def __getitem__(self, idx: Any) -> PoolView:
        return PoolView(self.pool, self.rows[idx])

    def read(self, idx: np.ndarray) -> np.ndarray:
        return self.pool.read(self.rows[idx])


def read_rows(images: np.ndarray | PoolView, idx: np.ndarray) -> np.ndarray:
    """Rows `idx` of a split's images, whether in memory or pooled on disk."""
    return images.read(idx) if isinstance(images, PoolView) else np.asarray(images[idx])


def decode_all(
    entries: Iterator[tuple[str, bytes]],
    decode: Callable[[str, bytes, Counter], np.ndarray],
    converted: Counter,
    pool: ImagePool | None = None,
) -> tuple[ImagePool, dict[str, int]]:
    """Decode every (name, file bytes) on `decode_threads()` threads into a pool; returns the
    pool and each name's row. The first unreadable file stops everything with its DataError."""
    pool = pool or ImagePool()
    rows: dict[str, int] = {}
    threads = decode_threads()

    def work(name: str, data: bytes) -> tuple[str, np.ndarray, str, Counter]:
        counts: Counter = Counter()
        img = decode(name, data, counts)
        return name, img, hashlib.sha256(img.tobytes()).hexdigest(), counts

    pending: deque[Future] = deque()

    def finish(future: Future) -> None:
        name, img, digest, counts = future.result()
        rows[name] = pool.append(name, img, digest)
        converted.update(counts)

    with ThreadPoolExecutor(threads, thread_name_prefix="decode") as executor:
        try:
            for name, data in entries:
                pending.append(executor.submit(work, name, data))
                while len(pending) >= threads * _IN_FLIGHT_PER_THREAD:
                    finish(pending.popleft())
            while pending:
                finish(pending.popleft())
        finally:
            for future in pending:
                future.cancel()
    return pool, rows

"""Files of a directory or an archive (.tar/.tar.gz/.tgz, .zip, .7z), read in memory, in order.

Nothing is extracted to disk: every reader yields (member path, is_dir, bytes or None), so a bad
archive loses nothing. Members with absolute paths, `..` components or drive letters, and link
members, are refused before anything is read. `.7z` archives (py7zr) are decompressed on a
helper thread into a bounded queue, so memory stays flat whatever their size.

Two options serve the sources that take archives as they are shipped (Kaggle: `train.7z` and
`test.7z` inside one zip):
- `keep(path)` picks the files wanted; the others are passed over unread (a 7z archive with no
  wanted member is not decompressed at all), so a 300,000-image `test.7z` costs nothing to a
  reader that wants `train/`.
- `nested=True` opens archives found inside the directory or archive, one level deep, their
  members under the folder the inner archive sits in. An inner archive is spooled to a
  temporary file first (py7zr and zipfile need to seek), so memory stays bounded.
"""

from __future__ import annotations

import io
import os
import queue
import shutil
import tarfile
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from tlpipe.util.errors import DataError, first_line

Entry = tuple[PurePosixPath, bool, bytes | None]
Keep = Callable[[PurePosixPath], bool]
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip", ".7z")
_SEVEN_ZIP_MAGIC = b"7z\xbc\xaf\x27\x1c"
_QUEUE_FILES = 256  # decompressed 7z members waiting for the reader


def safe_member_name(archive: str | Path, name: str) -> PurePosixPath:
    """Refuse absolute paths and `..` components: such a member could write outside any target."""
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise DataError(f"{archive}: refusing unsafe archive member {name!r} (absolute path or '..' traversal)")
    return p


def is_archive_name(name: str | PurePosixPath) -> bool:
    return str(name).lower().endswith(ARCHIVE_SUFFIXES)


def iter_entries(path: Path, keep: Keep | None = None, nested: bool = False) -> Iterator[Entry]:
    """Every directory, and every file `keep` accepts (all by default), under `path` (a directory
    or an archive), in a stable order; with `nested`, archives inside it are opened too."""
    if path.is_dir():
        return _iter_dir(path, keep, nested)
    with open(path, "rb") as f:
        head = f.read(len(_SEVEN_ZIP_MAGIC))
    return iter_archive(path, path, head, keep, nested)


def iter_archive_bytes(name: str, data: bytes) -> Iterator[Entry]:
    """The members of an archive held in memory (an archive inside an archive)."""
    return iter_archive(name, io.BytesIO(data), data[: len(_SEVEN_ZIP_MAGIC)])


def iter_archive(
    name: str | Path, source: Path | IO[bytes], head: bytes, keep: Keep | None = None, nested: bool = False
) -> Iterator[Entry]:
    if head.startswith(_SEVEN_ZIP_MAGIC):
        return _iter_7z(name, source, keep)
    if zipfile.is_zipfile(source):
        if not isinstance(source, Path):
            source.seek(0)
        return _iter_zip(name, source, keep, nested)
    if not isinstance(source, Path):
        source.seek(0)
    return _iter_tar(name, source, keep, nested)


def _wanted(keep: Keep | None, member: PurePosixPath) -> bool:
    return keep is None or keep(member)


def _inner(outer: str | Path, member: PurePosixPath, source: Path | IO[bytes], keep: Keep | None) -> Iterator[Entry]:
    """The members of an archive inside a directory or an archive, under the folder it sits in."""

    def inner_keep(p: PurePosixPath) -> bool:
        return _wanted(keep, member.parent / p)

    if isinstance(source, Path):  # a file on disk is read in place
        for path, is_dir, data in iter_entries(source, inner_keep):
            yield member.parent / path, is_dir, data
        return
    with tempfile.TemporaryFile(prefix="tlpipe-inner-") as spool:
        shutil.copyfileobj(source, spool, 1 << 20)
        spool.seek(0)
        head = spool.read(len(_SEVEN_ZIP_MAGIC))
        spool.seek(0)
        for path, is_dir, data in iter_archive(f"{outer}:{member}", spool, head, inner_keep):
            yield member.parent / path, is_dir, data


def _iter_tar(name: str | Path, source: Path | IO[bytes], keep: Keep | None, nested: bool) -> Iterator[Entry]:
    try:
        opened = tarfile.open(source, "r:*") if isinstance(source, Path) else tarfile.open(fileobj=source, mode="r:*")
        with opened as tar:
            for m in tar:
                member = safe_member_name(name, m.name)
                if m.issym() or m.islnk():
                    raise DataError(f"{name}: refusing link member {m.name!r} -> {m.linkname!r}")
                if m.isdir():
                    yield member, True, None
                elif m.isfile() and nested and is_archive_name(member):
                    f = tar.extractfile(m)
                    yield from _inner(name, member, f or io.BytesIO(), keep)
                elif m.isfile() and _wanted(keep, member):
                    f = tar.extractfile(m)
                    yield member, False, f.read() if f else b""
    except (tarfile.TarError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise DataError(f"{name}: corrupt or truncated archive ({type(err).__name__}: {first_line(err)})") from None


def _iter_zip(name: str | Path, source: Path | IO[bytes], keep: Keep | None, nested: bool) -> Iterator[Entry]:
    try:
        with zipfile.ZipFile(source) as zf:
            for info in zf.infolist():
                member = safe_member_name(name, info.filename)
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise DataError(f"{name}: refusing link member {info.filename!r}")
                if info.is_dir():
                    yield member, True, None
                elif nested and is_archive_name(member):
                    with zf.open(info) as f:
                        yield from _inner(name, member, f, keep)
                elif _wanted(keep, member):
                    yield member, False, zf.read(info)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise DataError(f"{name}: corrupt or truncated archive ({type(err).__name__}: {first_line(err)})") from None


def _iter_7z(name: str | Path, source: Path | IO[bytes], keep: Keep | None) -> Iterator[Entry]:
    import py7zr
    from py7zr.io import Py7zIO, WriterFactory

    try:
        archive = py7zr.SevenZipFile(source, mode="r")
    except (py7zr.Bad7zFile, EOFError, OSError, ValueError) as err:
        raise DataError(f"{name}: corrupt or truncated 7z archive ({type(err).__name__}: {first_line(err)})") from None
    with archive:
        infos = archive.list()
        for info in infos:
            safe_member_name(name, info.filename)
            if getattr(info, "is_symlink", False):
                raise DataError(f"{name}: refusing link member {info.filename!r}")
        for info in sorted((i for i in infos if i.is_directory), key=lambda i: i.filename):
            yield PurePosixPath(info.filename), True, None
        targets = [i.filename for i in infos if not i.is_directory and _wanted(keep, PurePosixPath(i.filename))]
        if not targets:
            return  # nothing wanted: not one block decompressed
        everything = len(targets) == sum(not i.is_directory for i in infos)
        files: queue.Queue[Any] = queue.Queue(maxsize=_QUEUE_FILES)
        stop = threading.Event()
        done = object()

        class Member(Py7zIO):
            def __init__(self, filename: str) -> None:
                self.filename, self.buffer = filename, io.BytesIO()

            def write(self, s: bytes | bytearray) -> int:
                if stop.is_set():
                    raise InterruptedError("reader stopped")
                return self.buffer.write(s)

            def read(self, size: int | None = None) -> bytes:
                return self.buffer.read(size)

            def seek(self, offset: int, whence: int = 0) -> int:
                return self.buffer.seek(offset, whence)

            def flush(self) -> None:
                pass

            def size(self) -> int:
                return self.buffer.getbuffer().nbytes

            def close(self) -> None:  # the member is complete: hand it to the reader
                _put(files, stop, (self.filename, self.buffer.getvalue()))

        class Factory(WriterFactory):
            def create(self, filename: str) -> Py7zIO:
                return Member(filename)

        def extract() -> None:
            try:
                if everything:
                    archive.extractall(factory=Factory())
                else:
                    archive.extract(targets=targets, factory=Factory())
                _put(files, stop, done)
            except BaseException as err:  # noqa: BLE001 - handed to the reader, raised there
                _put(files, stop, err)

        worker = threading.Thread(target=extract, name="7z-reader", daemon=True)
        worker.start()
        try:
            while (item := files.get()) is not done:
                if isinstance(item, BaseException):
                    raise DataError(f"{name}: corrupt 7z archive ({type(item).__name__}: {first_line(item)})") from None
                filename, data = item
                yield PurePosixPath(filename), False, data
        finally:
            stop.set()
            worker.join(timeout=10)


def _put(q: queue.Queue[Any], stop: threading.Event, item: Any) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


def _iter_dir(root: Path, keep: Keep | None, nested: bool) -> Iterator[Entry]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        if rel != PurePosixPath("."):
            yield rel, True, None
        for filename in sorted(filenames):
            p = Path(dirpath) / filename
            member = rel / filename if rel != PurePosixPath(".") else PurePosixPath(filename)
            if nested and is_archive_name(member):
                yield from _inner(root, member, p, keep)
                continue
            if not _wanted(keep, member):
                continue
            try:
                data = p.read_bytes()
            except OSError as err:
                raise DataError(f"{p}: unreadable file ({err.strerror})") from None
            yield member, False, data

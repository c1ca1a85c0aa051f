"""Fixed-shape arrays with labels, stored as TFRecord shards and streamed back through tf.data.

One `Records` is one split of prepared images (data/prepared/, written by ingest) or of cached
backbone features (tlpipe.training.features): shards of `shard_size` records each, every record
a `tf.train.Example` with the array's raw bytes (`x`) and its integer label (`y`). The shapes,
dtype, files and count are in the index (`Records.describe()`), kept beside the shards.

TFRecord because tf.data reads it natively (parallel interleave across shards, parsing a batch
at a time in C++), it is append-only while writing (memory stays flat whatever the number of
records), and every TensorFlow user already has the tools to inspect it. Raw bytes, not PNG or
JPEG: decoding was paid once in ingest, and a raw record reads back as a zero-copy view.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlpipe.util.errors import DataError

SHARD_BYTES = 64 << 20  # payload per shard: a few hundred photos, tens of thousands of CIFAR images
READ_CYCLE = 8  # shards read at once when streaming in a shuffled order
SUFFIX = ".tfrecord"
SCAN_BYTES = 16 << 20  # a batch when reading a whole set through (validate, gather, load)


def shard_size(record_bytes: int) -> int:
    """Records per shard: a function of the record's size only, so the same data gives the same shards."""
    return max(1, SHARD_BYTES // max(1, record_bytes))


@dataclass(frozen=True)
class Records:
    """One stored set of (array, label) records: `files` in `directory`, in their stored order."""

    directory: Path
    files: tuple[str, ...]
    count: int
    shape: tuple[int, ...]
    dtype: str
    fingerprint: str

    @classmethod
    def from_index(cls, directory: str | Path, entry: dict[str, Any]) -> Records:
        directory = Path(directory)
        try:
            records = cls(
                directory=directory,
                files=tuple(entry["files"]),
                count=int(entry["count"]),
                shape=tuple(int(d) for d in entry["shape"]),
                dtype=str(entry["dtype"]),
                fingerprint=str(entry["fingerprint"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{directory}: bad shard index entry ({type(err).__name__}: {err})") from None
        missing = [f for f in records.files if not (directory / f).is_file()]
        if missing:
            raise DataError(
                f"{directory / missing[0]}: shard not found ({len(missing)} of {len(records.files)} missing); "
                "rerun the stage that writes it (dvc repro)"
            )
        return records

    def describe(self) -> dict[str, Any]:
        """The index entry: what `from_index` reads back."""
        return {
            "files": list(self.files),
            "count": self.count,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "fingerprint": self.fingerprint,
        }

    @property
    def record_bytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def scan_batch(self) -> int:
        """Records per batch when a whole set is read through: about SCAN_BYTES, at most 1,024."""
        return max(1, min(1024, SCAN_BYTES // max(1, self.record_bytes)))

    @property
    def nbytes(self) -> int:
        return self.count * self.record_bytes

    def paths(self) -> list[str]:
        return [str(self.directory / f) for f in self.files]

    def parse(self, serialized: Any) -> tuple[Any, Any]:
        """A batch of serialized records → (arrays B×shape, int64 labels B), as TF ops."""
        import tensorflow as tf

        parsed = tf.io.parse_example(
            serialized,
            {"x": tf.io.FixedLenFeature([], tf.string), "y": tf.io.FixedLenFeature([], tf.int64)},
        )
        x = tf.io.decode_raw(parsed["x"], tf.dtypes.as_dtype(self.dtype))
        return tf.reshape(x, [-1, *self.shape]), parsed["y"]

    def dataset(self, batch_size: int) -> Any:
        """tf.data of (x, y) batches in stored order (the last one may be smaller)."""
        import tensorflow as tf

        ds = tf.data.TFRecordDataset(self.paths(), buffer_size=1 << 20)
        return ds.batch(batch_size).map(self.parse, num_parallel_calls=tf.data.AUTOTUNE).prefetch(2)

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(x, y) numpy batches in stored order."""
        if self.count == 0:
            return
        for x, y in self.dataset(batch_size):
            yield x.numpy(), y.numpy()

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """Every record in memory: (N×shape arrays, int64 labels N)."""
        x = np.empty((self.count, *self.shape), np.dtype(self.dtype))
        y = np.empty(self.count, np.int64)
        done = 0
        for bx, by in self.batches(self.scan_batch):
            x[done : done + len(by)], y[done : done + len(by)] = bx, by
            done += len(by)
        if done != self.count:
            raise DataError(f"{self.directory}: the shards hold {done} records, the index says {self.count}")
        return x, y

    def gather(self, indices: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """The records at `indices` (positions in stored order), in the order given; one pass over
        the shards, holding only what was asked for."""
        wanted = np.asarray(list(indices), np.int64)
        if len(wanted) and (wanted.min() < 0 or wanted.max() >= self.count):
            raise DataError(f"{self.directory}: record index out of range 0..{self.count - 1}")
        order = np.argsort(wanted, kind="stable")
        x = np.empty((len(wanted), *self.shape), np.dtype(self.dtype))
        y = np.empty(len(wanted), np.int64)
        k, start = 0, 0
        for bx, by in self.batches(self.scan_batch):
            stop = start + len(by)
            while k < len(order) and wanted[order[k]] < stop:
                i = order[k]
                x[i], y[i] = bx[wanted[i] - start], by[wanted[i] - start]
                k += 1
            start = stop
            if k == len(order):
                break
        return x, y

    def sample_batches(self, indices: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
        """The arrays at sorted `indices`, in that order, `batch_size` at a time: one pass over the
        shards, holding one batch."""
        indices = np.asarray(indices, np.int64)
        pending: list[np.ndarray] = []
        held, k, start = 0, 0, 0
        for bx, by in self.batches(self.scan_batch):
            stop = start + len(by)
            j = int(np.searchsorted(indices, stop))
            if j > k:
                pending.append(bx[indices[k:j] - start])
                held += j - k
                k = j
            while held >= batch_size:
                joined = np.concatenate(pending)
                yield joined[:batch_size]
                pending, held = [joined[batch_size:]], held - batch_size
            start = stop
            if k == len(indices):
                break
        if held:
            yield np.concatenate(pending)

    def gather_labels(self, indices: np.ndarray) -> np.ndarray:
        """The labels at `indices` (no arrays read)."""
        import tensorflow as tf

        labels = (
            tf.data.TFRecordDataset(self.paths(), buffer_size=1 << 20)
            .batch(4096)
            .map(lambda s: tf.io.parse_example(s, {"y": tf.io.FixedLenFeature([], tf.int64)})["y"])
        )
        every = np.concatenate([b.numpy() for b in labels]) if self.count else np.empty(0, np.int64)
        return every[np.asarray(indices, np.int64)]

    def epoch(self, *, batch_size: int, seed: int, epoch: int, steps: int) -> Any:
        """tf.data of `steps` full batches of serialized records for one epoch of training, in an
        order that is a function of (the shards, seed, epoch) only: the shards in a seeded order,
        READ_CYCLE of them interleaved record by record, then a seeded shuffle buffer of about
        SHUFFLE_BYTES. Parse with `parse` (after any batching a caller adds)."""
        import tensorflow as tf

        rng = np.random.default_rng([seed, epoch])
        files = np.asarray(self.paths())[rng.permutation(len(self.files))]
        ds = tf.data.Dataset.from_tensor_slices(files).interleave(
            lambda f: tf.data.TFRecordDataset(f, buffer_size=1 << 20),
            cycle_length=min(READ_CYCLE, len(files)),
            block_length=1,
            num_parallel_calls=min(READ_CYCLE, len(files)),
            deterministic=True,
        )
        buffer = min(self.count, max(batch_size, shuffle_buffer(self.record_bytes)))
        ds = ds.shuffle(buffer, seed=int(rng.integers(2**31)), reshuffle_each_iteration=False)
        return ds.batch(batch_size, drop_remainder=True).take(steps)


SHUFFLE_BYTES = 256 << 20  # records waiting in the shuffle buffer while streaming


def shuffle_buffer(record_bytes: int) -> int:
    return max(1, SHUFFLE_BYTES // max(1, record_bytes))


def concat(name: str, parts: list[Records]) -> Records:
    """Several record sets read as one, in order (their files by absolute path)."""
    first = parts[0]
    if any(p.shape != first.shape or p.dtype != first.dtype for p in parts):
        raise DataError(f"{name}: cannot join records of different shapes or dtypes")
    return Records(
        directory=first.directory,
        files=tuple(str((p.directory / f).resolve()) for p in parts for f in p.files),
        count=sum(p.count for p in parts),
        shape=first.shape,
        dtype=first.dtype,
        fingerprint=hashlib.sha256("".join(p.fingerprint for p in parts).encode()).hexdigest(),
    )


class RecordsWriter:
    """Writes (array, label) records into shards `<prefix>-NNNNN-of-MMMMM.tfrecord` in `directory`.

    `count` is known up front, so every shard's name holds the total; records go in the order
    they are given. `close()` returns the `Records`, with the content fingerprint of what was written
    (SHA-256 over the shape, every array's bytes, then the labels: tlpipe.util.hashing.fingerprint's
    value for the same arrays).
    """

    def __init__(self, directory: Path, prefix: str, *, count: int, shape: tuple[int, ...], dtype: str) -> None:
        import tensorflow as tf

        self._tf = tf
        self.directory, self.prefix, self.count = Path(directory), prefix, count
        self.directory.mkdir(parents=True, exist_ok=True)
        self.shape, self.dtype = tuple(shape), np.dtype(dtype).name
        record_bytes = int(np.prod(self.shape)) * np.dtype(dtype).itemsize
        self.per_shard = shard_size(record_bytes)
        self.num_shards = max(1, math.ceil(count / self.per_shard))
        self.files: list[str] = []
        self.written = 0
        self.labels: list[np.ndarray] = []
        self._hash = hashlib.sha256(str((count, *self.shape)).encode())
        self._writer: Any = None

    def write(self, x: np.ndarray, y: np.ndarray) -> None:
        """A batch of records (N×shape arrays of this writer's dtype, N labels)."""
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if x.shape[1:] != self.shape:
            raise DataError(f"{self.directory}: record shape {x.shape[1:]} is not {self.shape}")
        tf = self._tf
        for row, label in zip(x, np.asarray(y, np.int64), strict=True):
            if self.written % self.per_shard == 0:
                self._next_shard()
            raw = row.tobytes()
            self._hash.update(raw)
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "x": tf.train.Feature(bytes_list=tf.train.BytesList(value=[raw])),
                        "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                    }
                )
            )
            # deterministic: a map's keys in sorted order, not in the order of the process's string hashes
            self._writer.write(example.SerializeToString(deterministic=True))
            self.written += 1
        self.labels.append(np.asarray(y, np.int64))

    def _next_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        name = f"{self.prefix}-{len(self.files):05d}-of-{self.num_shards:05d}{SUFFIX}"
        self.files.append(name)
        self._writer = self._tf.io.TFRecordWriter(str(self.directory / name))

    def close(self) -> Records:
        if self._writer is not None:
            self._writer.close()
        if self.written != self.count:
            raise DataError(f"{self.directory}: {self.written} records written for {self.count} announced")
        if not self.files:  # an empty set still has its (empty) shard, so readers need no special case
            self._next_shard()
            self._writer.close()
        labels = np.concatenate(self.labels) if self.labels else np.empty(0, np.int64)
        self._hash.update(labels.tobytes())
        return Records(
            directory=self.directory,
            files=tuple(self.files),
            count=self.count,
            shape=self.shape,
            dtype=self.dtype,
            fingerprint=self._hash.hexdigest(),
        )


def write_records(directory: Path, prefix: str, x: np.ndarray, y: np.ndarray, chunk: int = 1024) -> Records:
    """Arrays already in memory written as records (tests, and sources that are arrays)."""
    writer = RecordsWriter(directory, prefix, count=len(y), shape=tuple(x.shape[1:]), dtype=x.dtype.name)
    for i in range(0, len(y), chunk):
        writer.write(x[i : i + chunk], y[i : i + chunk])
    return writer.close()

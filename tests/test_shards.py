"""Prepared data as TFRecord shards (tlpipe.data.records): written and read back exactly, split into
shards by record size only, streamed for training in an order that is a function of (data, seed,
epoch) alone, and the same bytes from the same inputs."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import REPO
from tests.inputs import make_class_tree
from tlpipe.data import records as records_module
from tlpipe.data.dataset import split_records
from tlpipe.data.records import Records, concat, write_records
from tlpipe.training.augment import streamed_batches, streamed_eval_batches
from tlpipe.util.errors import DataError
from tlpipe.util.hashing import fingerprint


def arrays(n: int, size: int = 8, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, classes, n).astype(np.int64)


def test_records_round_trip_in_shards_sized_by_the_record(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(records_module, "SHARD_BYTES", 8 * 8 * 3 * 10)  # 10 records a shard
    x, y = arrays(95)
    rec = write_records(tmp_path, "train", x, y)
    assert rec.files == tuple(f"train-{i:05d}-of-00010.tfrecord" for i in range(10))
    assert rec.fingerprint == fingerprint(x, y)  # the value the in-memory hash gives
    back = Records.from_index(tmp_path, rec.describe())
    bx, by = back.load()
    assert np.array_equal(bx, x) and np.array_equal(by, y)
    idx = [93, 4, 50, 4]
    gx, gy = back.gather(idx)
    assert np.array_equal(gx, x[idx]) and np.array_equal(gy, y[idx])
    sample = np.array([3, 4, 50, 93])
    batches = list(back.sample_batches(sample, 3))
    assert [len(b) for b in batches] == [3, 1] and np.array_equal(np.concatenate(batches), x[sample])
    assert np.array_equal(back.gather_labels(sample), y[sample])
    (tmp_path / rec.files[3]).unlink()
    with pytest.raises(DataError, match=r"train-00003-of-00010.tfrecord: shard not found \(1 of 10 missing\)"):
        Records.from_index(tmp_path, rec.describe())


def test_an_epoch_streams_a_seeded_order_that_only_data_seed_and_epoch_decide(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(records_module, "SHARD_BYTES", 8 * 8 * 3 * 16)
    x, y = arrays(160)
    # Tag each image with its index in its first pixels, to read the order back from the batches.
    x[:, 0, 0, 0], x[:, 0, 0, 1] = np.arange(160) % 256, np.arange(160) // 256
    rec = write_records(tmp_path, "train", x, y)

    def order(seed: int, epoch: int, steps: int = 10) -> np.ndarray:
        ds = streamed_batches(rec, 4, batch_size=16, seed=seed, epoch=epoch, steps=steps)
        out = []
        for bx, by in ds:
            bx, by = bx.numpy(), by.numpy()
            idx = bx[:, 0, 0, 0].astype(int) + 256 * bx[:, 0, 0, 1].astype(int)
            assert np.array_equal(by.argmax(1), y[idx])  # labels travel with their images
            out.append(idx)
        return np.concatenate(out)

    first = order(42, 0)
    assert np.array_equal(first, order(42, 0))  # the same again: a resumed run sees the same batches
    assert sorted(first) == list(range(160))  # every image once per epoch
    assert not np.array_equal(first, order(42, 1)) and not np.array_equal(first, order(7, 0))
    assert len(order(42, 0, steps=3)) == 48 and np.array_equal(order(42, 0, steps=3), first[:48])
    # Mixed from the first batch on, although the shards hold consecutive indices.
    assert len({i // 16 for i in first[:16]}) > 4

    evaluated = np.concatenate([b.numpy().argmax(1) for _, b in streamed_eval_batches(rec, 4, 64)])
    assert np.array_equal(evaluated, y)  # evaluation reads in stored order


def test_joined_records_read_as_one(tmp_path: Path) -> None:
    (a, ya), (b, yb) = arrays(30, seed=1), arrays(12, seed=2)
    joined = concat("both", [write_records(tmp_path, "a", a, ya), write_records(tmp_path, "b", b, yb)])
    jx, jy = joined.load()
    assert joined.count == 42 and np.array_equal(jx, np.concatenate([a, b])) and np.array_equal(jy, np.r_[ya, yb])


def test_same_inputs_same_shard_bytes_and_classes_mixed_in_stored_order(tmp_path: Path) -> None:
    """Two ingest processes with different string hashing (PYTHONHASHSEED: the order a protobuf
    map serializes in unless asked for its deterministic form) write the same bytes."""
    images = make_class_tree(tmp_path / "photos", ["cat", "dog", "eel"], {"train": 24}, size=16)
    digests = []
    for name, hash_seed in (("one", "1"), ("two", "2")):
        root = tmp_path / name
        root.mkdir()
        (root / "params.yaml").write_text(yaml.safe_dump({"data": {"source": "folder", "path": str(images)}}))
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
        proc = subprocess.run(
            [sys.executable, "-m", "stages.ingest"], cwd=root, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        prepared = root / "data" / "prepared"
        digests.append({f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(prepared.iterdir())})
    assert digests[0] == digests[1] and any(name.endswith(".tfrecord") for name in digests[0])
    _, y = split_records(tmp_path / "one" / "data" / "prepared", "train").load()
    assert len(set(y[:12].tolist())) == 3  # a seeded order, not class after class

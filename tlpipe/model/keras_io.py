"""Saving and loading the Keras model, and running it in batches, with errors that say what is wrong.

The contract: `models/model.keras` takes uint8-valued RGB NHWC images at the dataset's native
size (the input dtype may be float32 holding 0..255) and returns class probabilities.
Everything here checks that contract instead of trusting it.

Same weights, same bytes: a `.keras` file is a zip whose `model.weights.h5` entry carries the time
it was written, whose metadata.json carries the save date, and whose config.json numbers shared
objects by their memory address (`shared_object_id`); `save_keras` rewrites all three to fixed
values, so DVC sees a retrained-but-identical model as unchanged.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tlpipe.data.dataset import DatasetInfo
from tlpipe.util.atomic import atomic_file
from tlpipe.util.errors import ModelError, first_line

if TYPE_CHECKING:
    import keras

    from tlpipe.data.records import Records

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def save_keras(model: Any, path: str | Path) -> None:
    """`model.save(path)`, whole or not at all, with the file's bytes a function of the model alone."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, tempfile.TemporaryDirectory(prefix=".save-", dir=path.parent) as scratch:
        raw = Path(scratch) / "model.keras"
        model.save(raw)
        canonical_zip(raw, tmp)


def canonical_zip(source: Path, target: Path) -> None:
    """A copy of a Keras zip with fixed entry times, no save date in metadata.json, and shared
    objects numbered in order of appearance in config.json."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "metadata.json":
                meta = json.loads(data)
                meta.pop("date_saved", None)
                data = json.dumps(meta).encode()
            elif info.filename == "config.json":
                data = json.dumps(_renumber_shared_objects(json.loads(data), {})).encode()
            entry = zipfile.ZipInfo(info.filename, date_time=_ZIP_EPOCH)
            entry.compress_type = info.compress_type
            entry.external_attr = 0o644 << 16
            out.writestr(entry, data)


def _renumber_shared_objects(node: Any, ids: dict[int, int]) -> Any:
    """The same config with each `shared_object_id` (an address) replaced by 1, 2, 3... in order."""
    if isinstance(node, dict):
        out = {k: _renumber_shared_objects(v, ids) for k, v in node.items()}
        if "shared_object_id" in node:
            out["shared_object_id"] = ids.setdefault(node["shared_object_id"], len(ids) + 1)
        return out
    if isinstance(node, list):
        return [_renumber_shared_objects(v, ids) for v in node]
    return node


def load_keras_model(path: str | Path, info: DatasetInfo | None = None) -> keras.Model:
    """Load `path` (a .keras file) and, given `info`, check its input and output shapes."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model not found; run the finetune stage first (dvc repro finetune)")
    import keras

    try:
        # compile=False: inference only, and a model saved with a custom loss still loads.
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 - keras raises ValueError, OSError, zipfile errors... for a bad file
        raise ModelError(f"{path}: not a loadable Keras model ({type(err).__name__}: {first_line(err)})") from None
    if info is not None:
        check_keras_model(model, info, str(path))
    return model


def check_keras_model(model: keras.Model, info: DatasetInfo, name: str = "model") -> None:
    """The model must take one NHWC image batch of the data's size and give one score per class."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"{name}: expected one input and one output, got {len(model.inputs)} and {len(model.outputs)}")
    in_shape = tuple(model.inputs[0].shape)
    if in_shape[1:] != tuple(info.image_shape):
        raise ModelError(
            f"{name}: input shape {_shape(in_shape)} does not match "
            f"the data's images {_shape((None, *info.image_shape))}"
        )
    out_units = model.outputs[0].shape[-1]
    if out_units != info.num_classes:
        raise ModelError(f"{name}: {out_units} outputs but the data has {info.num_classes} classes")


def keras_predict(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Class probabilities (float32, N×C) for uint8 images, batch by batch.

    `predict_on_batch` on slices keeps a memory-mapped split on disk; `model.predict` on a whole
    array first builds a tf.data pipeline over it, which stalled for long on large arrays here.
    """
    return predict_batches(model, (images[i : i + batch_size] for i in range(0, len(images), batch_size)))


def keras_predict_records(model: keras.Model, records: Records, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (float32, N×C) and labels of a split streamed from its shards."""
    labels: list[np.ndarray] = []

    def images() -> Iterator[np.ndarray]:
        for x, y in records.batches(batch_size):
            labels.append(y)
            yield x

    probs = predict_batches(model, images())
    return probs, np.concatenate(labels) if labels else np.empty(0, np.int64)


def predict_batches(model: keras.Model, batches: Iterable[np.ndarray]) -> np.ndarray:
    dtype = np.dtype(model.inputs[0].dtype)
    out = [np.asarray(model.predict_on_batch(np.asarray(b).astype(dtype, copy=False)), np.float32) for b in batches]
    if not out:
        return np.zeros((0, model.outputs[0].shape[-1]), np.float32)
    probs = np.concatenate(out)
    check_probabilities(probs, "Keras model")
    return probs


def check_probabilities(probs: np.ndarray, name: str) -> None:
    """Rows must be probability vectors: a model ending in logits would give wrong metrics silently."""
    if len(probs) == 0:
        return
    sums = probs.sum(axis=1)
    if not np.all(np.isfinite(probs)) or probs.min() < -1e-4 or np.abs(sums - 1).max() > 1e-2:
        raise ModelError(
            f"{name}: outputs are not class probabilities (row sums {sums.min():.3g}..{sums.max():.3g}, "
            f"min {np.nanmin(probs):.3g}); the model must end in a softmax"
        )


def _shape(shape: tuple) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"

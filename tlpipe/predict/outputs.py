"""The CSV files stages.predict writes: a table of predictions, or a Kaggle submission.

- table: `file,label,confidence,top_k[,p_<class>...],error`, one row per input in input order,
  written as batches arrive. An unreadable image has empty predictions and its error.
- submission: `id,label` exactly like Kaggle's sampleSubmission.csv (id = the file name without
  suffix), ids in numeric order; an unreadable image keeps its row with an empty label. Rows are
  sorted at the end, so only an id and a class index per image are held (a few dozen bytes), and
  probabilities, when asked, stream into a second file in input order.

Probabilities are written with six decimals: the same model and images give the same bytes.
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath
from typing import IO

import numpy as np

from tlpipe.predict.inputs import Batch, natural_key
from tlpipe.util.errors import DataError


def _fmt(p: float) -> str:
    return f"{p:.6f}"


class TableWriter:
    def __init__(self, out: IO[str], classes: list[str], top_k: int, probabilities: bool) -> None:
        self.classes, self.top_k, self.probabilities = classes, min(top_k, len(classes)), probabilities
        self.csv = csv.writer(out, lineterminator="\n")
        prob_columns = [f"p_{c}" for c in classes] if probabilities else []
        self.csv.writerow(["file", "label", "confidence", "top_k", *prob_columns, "error"])

    def write(self, batch: Batch, probs: np.ndarray) -> None:
        rows = iter(probs)
        blank = [""] * (3 + (len(self.classes) if self.probabilities else 0))
        for i, name in enumerate(batch.names):
            if not batch.readable[i]:
                self.csv.writerow([name, *blank, batch.errors[i]])
                continue
            p = next(rows)
            top = np.argsort(-p, kind="stable")[: self.top_k]
            cells = [
                name,
                self.classes[top[0]],
                _fmt(p[top[0]]),
                " ".join(f"{self.classes[k]}:{_fmt(p[k])}" for k in top),
            ]
            self.csv.writerow([*cells, *(map(_fmt, p) if self.probabilities else ()), ""])

    def close(self) -> None:
        pass


class SubmissionWriter:
    def __init__(self, out: IO[str], classes: list[str], probabilities: IO[str] | None = None) -> None:
        self.out, self.classes = out, classes
        self.ids: list[str] = []
        self.seen: set[str] = set()
        self.labels: list[np.ndarray] = []
        self.probs = csv.writer(probabilities, lineterminator="\n") if probabilities else None
        if self.probs:
            self.probs.writerow(["id", *classes])

    def write(self, batch: Batch, probs: np.ndarray) -> None:
        labels = np.full(len(batch.names), -1, np.int32)
        labels[batch.readable] = probs.argmax(axis=1) if len(probs) else []
        ids = [PurePosixPath(n).stem for n in batch.names]
        for name, image_id in zip(batch.names, ids, strict=True):
            if image_id in self.seen:
                raise DataError(f"{name}: id {image_id!r} twice in the input; a submission needs one file per id")
            self.seen.add(image_id)
        self.ids += ids
        self.labels.append(labels)
        if self.probs:
            for image_id, p in zip((i for i, ok in zip(ids, batch.readable, strict=True) if ok), probs, strict=True):
                self.probs.writerow([image_id, *map(_fmt, p)])

    def close(self) -> None:
        labels = np.concatenate(self.labels) if self.labels else np.empty(0, np.int32)
        order = sorted(range(len(self.ids)), key=lambda i: natural_key(self.ids[i]))
        writer = csv.writer(self.out, lineterminator="\n")
        writer.writerow(["id", "label"])
        for i in order:
            writer.writerow([self.ids[i], self.classes[labels[i]] if labels[i] >= 0 else ""])


def probabilities_path(output: Path) -> Path:
    """Where a submission's probabilities go: beside it, `<name>.probabilities.csv`."""
    return output.with_name(f"{output.stem}.probabilities.csv")


def summary_path(output: Path) -> Path:
    return output.with_name(f"{output.stem}.summary.json")

"""Images named in a labels file (`data.source: labels_file`): how most labelled image sets arrive.

Kaggle's CIFAR-10 layout is the default: `train/1.png … 50000.png` and a `trainLabels.csv` of
`id,label`, shipped as `train.7z` inside one zip. data.path is a directory or an archive; archives
inside it are opened too (one level), and only the labels files and the images under the folders
they name are read, so an unlabeled `test.7z` beside them is never decompressed.

Everything the labels file says is checked before an image is decoded, and every error names
the file and line: a malformed CSV, a missing column, an empty id or label, an id (or image)
named twice, a label outside data.labels.classes, an image the file names that is missing, and
an image in the folder the file does not name (an error, or skipped and counted).
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from tlpipe.data.archives import iter_entries, safe_member_name
from tlpipe.data.folders import class_order, decode_splits, resized_to
from tlpipe.data.images import IMAGE_SUFFIXES
from tlpipe.data.raw import RawDataset, check_trainable, pinned_sha256, verify_sha256
from tlpipe.util.errors import DataError
from tlpipe.util.hashing import sha256_file

if TYPE_CHECKING:
    from tlpipe.config.data import DataParams, LabelsParams

log = logging.getLogger(__spec__.name)

MAX_SHOWN = 3  # examples quoted in an error about many rows


@dataclass(frozen=True)
class Row:
    line: int  # in the labels file, the header being line 1
    id: str
    image: PurePosixPath  # inside data.path
    label: str


def image_name(image_id: str, suffix: str) -> str:
    """The file an id names: `<id><suffix>`, or the id itself when it is a file name already."""
    return image_id if image_id.lower().endswith(IMAGE_SUFFIXES) else image_id + suffix


def parse_labels(origin: str, raw: bytes, folder: PurePosixPath, p: LabelsParams) -> list[Row]:
    """The rows of a labels file, each checked; `origin` names the file in errors."""
    try:
        text = raw.decode("utf-8-sig")  # Excel writes a byte-order mark
    except UnicodeDecodeError as err:
        raise DataError(f"{origin}: not UTF-8 text (byte {err.start}); expected a CSV/TSV labels file") from None
    reader = csv.reader(io.StringIO(text), delimiter="\t" if origin.lower().endswith(".tsv") else ",", strict=True)
    rows: list[Row] = []
    seen: dict[PurePosixPath, int] = {}
    try:
        header = [h.strip() for h in next(reader, [])]
        if not header:
            raise DataError(
                f"{origin}: empty labels file; expected a header row naming {p.id_column!r} and {p.label_column!r}"
            )
        for key, column in (("id_column", p.id_column), ("label_column", p.label_column)):
            if column not in header:
                raise DataError(
                    f"{origin} line 1: no column {column!r} in the header {header}; "
                    f"set data.labels.{key} to the column that holds it"
                )
        id_at, label_at = header.index(p.id_column), header.index(p.label_column)
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue  # blank lines, the last one above all
            if len(fields) != len(header):
                raise DataError(
                    f"{origin} line {line}: {len(fields)} fields, expected {len(header)} like the header {header}"
                )
            image_id, label = fields[id_at].strip(), fields[label_at].strip()
            if not image_id:
                raise DataError(f"{origin} line {line}: empty {p.id_column!r}")
            if not label:
                raise DataError(f"{origin} line {line}: empty {p.label_column!r} for {p.id_column} {image_id!r}")
            image = folder / safe_member_name(origin, image_name(image_id, p.image_suffix))
            if image in seen:
                raise DataError(
                    f"{origin} line {line}: {p.id_column} {image_id!r} names {image} again "
                    f"(first on line {seen[image]}); each image must be labelled once"
                )
            seen[image] = line
            rows.append(Row(line, image_id, image, label))
    except csv.Error as err:
        raise DataError(f"{origin} line {reader.line_num}: malformed CSV ({err})") from None
    if not rows:
        raise DataError(
            f"{origin}: no rows below the header; expected one {p.id_column},{p.label_column} row per image"
        )
    return rows


def _folder(value: str) -> PurePosixPath:
    return PurePosixPath(".") if value.strip() in ("", ".", "./") else safe_member_name("data.labels", value.strip("/"))


def _under(folder: PurePosixPath, path: PurePosixPath) -> bool:
    return folder == PurePosixPath(".") or folder in path.parents


def match_images(
    path: Path, origin: str, rows: list[Row], folder: PurePosixPath, images: set[PurePosixPath], unlisted: str
) -> int:
    """Every row's image must be there; images nobody names are an error, or counted (returned)."""
    missing = [r for r in rows if r.image not in images]
    if missing:
        shown = "; ".join(f"line {r.line}: {r.image}" for r in missing[:MAX_SHOWN])
        more = f" and {len(missing) - MAX_SHOWN} more" if len(missing) > MAX_SHOWN else ""
        raise DataError(
            f"{origin}: {len(missing)} image(s) it names are not in {path} ({shown}{more}); an id names "
            "<data.labels.images>/<id><data.labels.image_suffix>"
        )
    named = {r.image for r in rows}
    extra = sorted(i for i in images if _under(folder, i) and i not in named)
    if extra and unlisted == "error":
        shown = ", ".join(map(str, extra[:MAX_SHOWN]))
        raise DataError(
            f"{path}: {len(extra)} image(s) under {folder}/ not named in {origin} (e.g. {shown}); label them, "
            "or set data.labels.unlisted: skip to leave them out"
        )
    return len(extra)


def read_labelled(path: Path, data: DataParams) -> RawDataset:
    """The images a labels file names, decoded (resized when data.image_size is set), in file order."""
    p = data.labels
    digest = None
    if path.is_file():
        # Refused before any image is decoded: a wrong archive is never half read.
        digest = verify_sha256(path, pinned) if (pinned := pinned_sha256(data)) else sha256_file(path)
    sources = {"train": (safe_member_name("data.labels.file", p.file), _folder(p.images))}
    if p.test_file:
        sources["test"] = (safe_member_name("data.labels.test_file", p.test_file), _folder(p.test_images))
    label_files = {f for f, _ in sources.values()}
    folders = [d for _, d in sources.values()]

    images: set[PurePosixPath] = set()

    def keep(member: PurePosixPath) -> bool:
        """Label files are read now; images are only listed (decoded once the labels are checked)."""
        if member.suffix.lower() in IMAGE_SUFFIXES and any(_under(d, member) for d in folders):
            images.add(member)
        return member in label_files

    blobs: dict[PurePosixPath, bytes] = {}
    for name, is_dir, blob in iter_entries(path, keep, nested=True):
        if not is_dir:
            blobs[name] = blob or b""
    images -= label_files

    listed: dict[str, list[Row]] = {}
    skipped: dict[str, int] = {}
    for split, (file, folder) in sources.items():
        origin = f"{path}:{file}" if path.is_file() else str(path / file)
        if file not in blobs:
            raise DataError(
                f"{origin}: labels file not found (data.labels.{'test_file' if split == 'test' else 'file'})"
            )
        listed[split] = parse_labels(origin, blobs.pop(file), folder, p)
        skipped[split] = match_images(path, origin, listed[split], folder, images, p.unlisted)

    labels = {r.label for rows in listed.values() for r in rows}
    if p.classes:
        for split, rows in listed.items():
            bad = next((r for r in rows if r.label not in p.classes), None)
            if bad:
                file = sources[split][0]
                raise DataError(
                    f"{path}:{file} line {bad.line}: label {bad.label!r} is not one of data.labels.classes {p.classes}"
                )
    classes = list(p.classes) if p.classes else class_order(labels)
    index = {c: i for i, c in enumerate(classes)}
    converted: Counter = Counter()
    members = {split: [(r.image, index[r.label]) for r in rows] for split, rows in listed.items()}
    splits = decode_splits(path, members, data, converted, nested=True)
    check_trainable(path, classes, splits)
    if converted:
        log.warning("converted to RGB: %s", ", ".join(f"{n} {m} image(s)" for m, n in sorted(converted.items())))
    if sum(skipped.values()):
        log.warning(
            "skipped %d image(s) the labels file(s) do not name (data.labels.unlisted: skip)", sum(skipped.values())
        )
    return RawDataset(
        classes=classes,
        splits=splits,
        source={
            "kind": "labels_file",
            "sha256": digest,
            "labels_files": {s: str(f) for s, (f, _) in sources.items()},
            "converted_to_rgb": dict(converted),
            "resized_to": resized_to(data),
            "skipped_unlisted": skipped,
            "labels": data.labels.model_dump(),
        },
    )

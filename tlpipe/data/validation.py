"""What the validate stage checks: one row per image, and the great-expectations suites over it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tlpipe.config.validate import ValidateParams
from tlpipe.data.dataset import MANIFEST_FILE, SPLITS, DatasetInfo, split_records


def image_table(prepared: Path) -> pd.DataFrame:
    """One row per image with the statistics the suite checks, computed from the images themselves."""
    manifest_path = prepared / MANIFEST_FILE
    manifest = pd.read_csv(manifest_path) if manifest_path.exists() else None
    frames = []
    for split in SPLITS:
        records = split_records(prepared, split)
        # Per-image statistics a batch at a time, streamed from the shards.
        means, stds, hashes, labels = [], [], [], []
        for x, y in records.batches(records.scan_batch):
            flat = x.reshape(len(x), -1).astype(np.float32)
            means.append(flat.mean(1))
            stds.append(flat.std(1))
            hashes += [hashlib.sha256(img.tobytes()).hexdigest() for img in x]
            labels.append(y)
        h, w, c = records.shape
        frame = pd.DataFrame(
            {
                "split": split,
                "index": np.arange(len(hashes)),
                "label": np.concatenate(labels) if labels else np.empty(0, np.int64),
                "height": h,
                "width": w,
                "channels": c,
                "dtype": records.dtype,
                "pixel_mean": np.concatenate(means) if means else np.empty(0),
                "pixel_std": np.concatenate(stds) if stds else np.empty(0),
                "sha256": hashes,
            }
        )
        if manifest is not None:
            rows = manifest[manifest["split"] == split]
            frame["source"] = rows["source"].to_numpy() if len(rows) == len(frame) else None
        frames.append(frame)
    df = pd.concat(frames, ignore_index=True)
    df["split_label"] = df["split"] + ":" + df["label"].astype(str)
    # How many splits hold each image: anything above 1 is leakage between splits.
    df["splits_sharing_image"] = df.groupby("sha256")["split"].transform("nunique")
    return df


def class_count_table(df: pd.DataFrame) -> pd.DataFrame:
    counts = df.groupby(["split", "label"]).size().rename("count").reset_index()
    mean = counts.groupby("split")["count"].transform("mean")
    # Stratified splitting cannot do better than one image either way of the mean: forgive that one.
    counts["relative_deviation"] = ((counts["count"] - mean).abs() - 1).clip(lower=0) / mean
    return counts


def build_suites(info: DatasetInfo, v: ValidateParams) -> dict[str, list[Any]]:
    """The expectations, per table. Every threshold comes from params (validate section)."""
    import great_expectations.expectations as gxe

    thresholds = (v.pixel_mean_min, v.pixel_mean_max, v.pixel_std_min, v.pixel_stats_mostly, v.class_balance_tolerance)
    mean_min, mean_max, std_min, mostly, balance = thresholds
    h, w, c = info.image_shape
    n = info.num_classes
    every_class_everywhere = [f"{s}:{k}" for s in SPLITS for k in range(n)]
    images = [
        *(
            gxe.ExpectColumnValuesToNotBeNull(column=col)
            for col in ("split", "label", "pixel_mean", "pixel_std", "sha256")
        ),
        gxe.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=n - 1),
        gxe.ExpectColumnDistinctValuesToContainSet(column="split_label", value_set=every_class_everywhere),
        gxe.ExpectColumnValuesToBeInSet(column="height", value_set=[h]),
        gxe.ExpectColumnValuesToBeInSet(column="width", value_set=[w]),
        gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[c]),
        gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=["uint8"]),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_mean", min_value=mean_min, max_value=mean_max, mostly=mostly),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=std_min, mostly=mostly),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["split", "sha256"]),
        gxe.ExpectColumnValuesToBeBetween(column="splits_sharing_image", min_value=1, max_value=1),
    ]
    counts = [gxe.ExpectColumnValuesToBeBetween(column="relative_deviation", min_value=0, max_value=balance)]
    return {"images": images, "class_counts": counts}


def describe_failure(result: Any, tables: dict[str, pd.DataFrame], table: str) -> str:
    """One line per failed expectation, with examples a person can go and look at."""
    cfg = result.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k != "batch_id"}
    r = result.result or {}
    line = f"{table}: {cfg.type}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    if "unexpected_count" in r:
        line += f": {r['unexpected_count']} of {r.get('element_count')} rows fail"
    df = tables[table]
    idx = r.get("partial_unexpected_index_list") or []
    if idx:
        cols = [c for c in ("split", "source", "label", "count", "sha256") if c in df.columns]
        examples = df.iloc[[int(i) for i in idx[:3]]][cols]
        if "sha256" in cols:
            examples = examples.assign(sha256=examples["sha256"].str[:12])
        line += f"; e.g. {examples.to_dict('records')}"
    elif cfg.type.endswith("contain_set"):
        line += f"; missing {sorted(set(kwargs['value_set']) - set(df[kwargs['column']]))}"
    elif r.get("observed_value") is not None:
        line += f"; observed {r['observed_value']}"
    return line

"""validate: a great-expectations suite over per-image statistics of `data/prepared/`.

One row per image (split, label, size, dtype, pixel mean/std, content hash); the suite checks
labels, class presence and balance, shapes, blank images, duplicates within a split and images
shared between splits (leakage). It writes the validation result (JSON), Data Docs (HTML) and
metrics to `reports/validate/`, then fails with the list of violated expectations, so nothing
downstream runs on bad data.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from stages.atomic import atomic_dir, write_json
from stages.cli import run_stage
from stages.dataset import MANIFEST_FILE, SPLITS, DataError, load_info, load_split
from stages.params import Params
from stages.paths import Paths

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
log = logging.getLogger("stages.validate")
logging.getLogger("great_expectations").setLevel(logging.WARNING)


class ValidationFailed(DataError):
    """The data violates expectations; the message lists them."""


def image_table(prepared: Path) -> pd.DataFrame:
    """One row per image with the statistics the suite checks, computed from the arrays themselves."""
    manifest_path = prepared / MANIFEST_FILE
    manifest = pd.read_csv(manifest_path) if manifest_path.exists() else None
    frames = []
    for split in SPLITS:
        x, y = load_split(prepared, split)
        # Per-image statistics in chunks: never a float copy of the whole split.
        means, stds = np.empty(len(x)), np.empty(len(x))
        for i in range(0, len(x), 2048):
            chunk = np.asarray(x[i : i + 2048], dtype=np.float32).reshape(len(x[i : i + 2048]), -1)
            means[i : i + 2048], stds[i : i + 2048] = chunk.mean(1), chunk.std(1)
        frame = pd.DataFrame(
            {
                "split": split,
                "index": np.arange(len(x)),
                "label": y.astype(np.int64),
                "height": x.shape[1],
                "width": x.shape[2],
                "channels": x.shape[3],
                "dtype": str(x.dtype),
                "pixel_mean": means,
                "pixel_std": stds,
                "sha256": [hashlib.sha256(img.tobytes()).hexdigest() for img in x],
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


def build_suites(gx, info, params: Params) -> dict[str, Any]:  # noqa: ANN001 - the gx module
    """The expectations, per table. Every threshold comes from params (validate section)."""
    import great_expectations.expectations as gxe

    v = params.validate_
    h, w, c = info.image_shape
    n = info.num_classes
    every_class_everywhere = [f"{s}:{k}" for s in SPLITS for k in range(n)]
    images = [
        *(gxe.ExpectColumnValuesToNotBeNull(column=col) for col in ("split", "label", "pixel_mean", "pixel_std", "sha256")),
        gxe.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=n - 1),
        gxe.ExpectColumnDistinctValuesToContainSet(column="split_label", value_set=every_class_everywhere),
        gxe.ExpectColumnValuesToBeInSet(column="height", value_set=[h]),
        gxe.ExpectColumnValuesToBeInSet(column="width", value_set=[w]),
        gxe.ExpectColumnValuesToBeInSet(column="channels", value_set=[c]),
        gxe.ExpectColumnValuesToBeInSet(column="dtype", value_set=["uint8"]),
        gxe.ExpectColumnValuesToBeBetween(
            column="pixel_mean", min_value=v.pixel_mean_min, max_value=v.pixel_mean_max, mostly=v.pixel_stats_mostly
        ),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_std", min_value=v.pixel_std_min, mostly=v.pixel_stats_mostly),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["split", "sha256"]),
        gxe.ExpectColumnValuesToBeBetween(column="splits_sharing_image", min_value=1, max_value=1),
    ]
    counts = [
        gxe.ExpectColumnValuesToBeBetween(column="relative_deviation", min_value=0, max_value=v.class_balance_tolerance),
    ]
    return {"images": images, "class_counts": counts}


def _describe(result: Any, tables: dict[str, pd.DataFrame], table: str) -> str:
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
        examples = examples.to_dict("records")
        line += f"; e.g. {examples}"
    elif cfg.type.endswith("contain_set"):
        line += f"; missing {sorted(set(kwargs['value_set']) - set(df[kwargs['column']]))}"
    elif r.get("observed_value") is not None:
        line += f"; observed {r['observed_value']}"
    return line


def run(params: Params, paths: Paths) -> dict:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    info = load_info(paths.prepared)
    images = image_table(paths.prepared)
    tables = {"images": images, "class_counts": class_count_table(images)}

    with tempfile.TemporaryDirectory() as gx_root:
        # A throwaway file context: Data Docs need one, and the project keeps no gx/ folder.
        ctx = gx.get_context(mode="file", project_root_dir=gx_root)
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = ctx.data_sources.add_pandas("prepared")
        definitions = []
        for name, expectations in build_suites(gx, info, params).items():
            suite = ctx.suites.add(gx.ExpectationSuite(name=name))
            for e in expectations:
                suite.add_expectation(e)
            batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
            definitions.append(ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite)))
        failures: list[str] = []
        results: dict[str, Any] = {}
        for definition in definitions:
            name = definition.name
            res = definition.run(batch_parameters={"dataframe": tables[name]}, result_format="SUMMARY")
            results[name] = res.to_json_dict()
            failures += [_describe(r, tables, name) for r in res.results if not r.success]
        ctx.build_data_docs()
        site = Path(gx_root) / "gx" / "uncommitted" / "data_docs" / "local_site"
        with atomic_dir(paths.reports("validate") / "data_docs") as docs:
            shutil.copytree(site, docs, dirs_exist_ok=True)

    evaluated = sum(len(r["results"]) for r in results.values())
    metrics = {
        "success": not failures,
        "expectations": evaluated,
        "failed": len(failures),
        "images": len(images),
        "duplicates_within_split": int(images.duplicated(["split", "sha256"]).sum()),
        "images_shared_between_splits": int((images["splits_sharing_image"] > 1).sum()),
        "blank_images": int((images["pixel_std"] < params.validate_.pixel_std_min).sum()),
        "max_class_imbalance": round(float(tables["class_counts"]["relative_deviation"].max()), 4),
    }
    write_json(paths.reports("validate") / "result.json", results)
    write_json(paths.reports("validate") / "metrics.json", metrics)
    if failures:
        raise ValidationFailed(
            f"{paths.prepared}: {len(failures)} of {evaluated} expectations failed "
            f"(Data Docs: {paths.reports('validate') / 'data_docs' / 'index.html'}):\n  - " + "\n  - ".join(failures)
        )
    log.info("validate: all %d expectations met on %d images", evaluated, len(images))
    return metrics


def main() -> None:
    run_stage(run)


if __name__ == "__main__":
    main()

"""validate stage: a great-expectations suite over per-image statistics of `data/prepared/`.

One row per image (split, label, size, dtype, pixel mean/std, content hash); the suite
(tlpipe.data.validation) checks labels, class presence and balance, shapes, blank images,
duplicates within a split and images shared between splits (leakage). It writes the validation
result (JSON), Data Docs (HTML) and metrics to `reports/validate/`, then fails with the list of
violated expectations, so nothing downstream runs on bad data.

Same data, same bytes: the run has a fixed name and time, and the ids and times
great-expectations adds anyway (batch load time, random ids) are replaced by a fixed token in
result.json and the Data Docs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.cli import run_stage
from tlpipe.config.validate import ValidateParams
from tlpipe.data.dataset import load_info
from tlpipe.data.validation import build_suites, class_count_table, describe_failure, image_table
from tlpipe.paths import Paths
from tlpipe.util.atomic import atomic_dir, atomic_file, json_text, write_json
from tlpipe.util.errors import DataError

log = logging.getLogger(__spec__.name)

RUN_NAME = "validate"
RUN_TIME = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
# What great-expectations writes that changes from run to run: timestamps and random ids.
_VOLATILE = re.compile(
    r"\d{8}T\d{6}\.\d{6}Z?"  # 20261203T081132.370851Z
    r"|\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:\d{2}|Z)?"  # 2026-12-03T08:11:32.370851+00:00
    r"|[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"  # random (version 4) uuids
)

if TYPE_CHECKING:
    from tlpipe.config.params import Params


class ValidationFailed(DataError):
    """The data violates expectations; the message lists them."""


def scrub(text: str) -> str:
    """Run-to-run noise of great-expectations' output (times, random ids) replaced by a fixed
    token; the fixed run time stays."""
    keep = {RUN_TIME.isoformat(), RUN_TIME.strftime("%Y%m%dT%H%M%S.%fZ")}
    return _VOLATILE.sub(lambda m: m.group(0) if m.group(0) in keep else "<volatile>", text)


def run(params: Params, paths: Paths) -> dict:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # before great-expectations is imported
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig

    info = load_info(paths.prepared)
    images = image_table(paths.prepared)
    tables = {"images": images, "class_counts": class_count_table(images)}
    suites = build_suites(info, params.validate_)
    run_id = RunIdentifier(run_name=RUN_NAME, run_time=RUN_TIME)

    with tempfile.TemporaryDirectory() as gx_root:
        # A throwaway file context: Data Docs need one, and the project keeps no gx/ folder.
        ctx = gx.get_context(mode="file", project_root_dir=gx_root)
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        source = ctx.data_sources.add_pandas("prepared")
        failures: list[str] = []
        results: dict[str, Any] = {}
        for name, expectations in suites.items():
            suite = ctx.suites.add(gx.ExpectationSuite(name=name))
            for e in expectations:
                suite.add_expectation(e)
            batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
            definition = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch, suite=suite))
            res = definition.run(batch_parameters={"dataframe": tables[name]}, result_format="SUMMARY", run_id=run_id)
            results[name] = res.to_json_dict()
            failures += [describe_failure(r, tables, name) for r in res.results if not r.success]
        ctx.build_data_docs()
        site = Path(gx_root) / "gx" / "uncommitted" / "data_docs" / "local_site"
        with atomic_dir(paths.reports("validate") / "data_docs") as docs:
            shutil.copytree(site, docs, dirs_exist_ok=True)
            for html in docs.rglob("*.html"):
                html.write_text(scrub(html.read_text()))

    evaluated = sum(len(r["results"]) for r in results.values())
    v = params.validate_
    metrics = {
        "success": not failures,
        "expectations": evaluated,
        "failed": len(failures),
        "images": len(images),
        "duplicates_within_split": int(images.duplicated(["split", "sha256"]).sum()),
        "images_shared_between_splits": int((images["splits_sharing_image"] > 1).sum()),
        "blank_images": int((images["pixel_std"] < v.pixel_std_min).sum()),
        "max_class_imbalance": round(float(tables["class_counts"]["relative_deviation"].max()), 4),
    }
    with atomic_file(paths.reports("validate") / "result.json") as tmp:
        tmp.write_text(scrub(json_text(results)))
    write_json(paths.reports("validate") / "metrics.json", metrics)
    if failures:
        raise ValidationFailed(
            f"{paths.prepared}: {len(failures)} of {evaluated} expectations failed "
            f"(Data Docs: {paths.reports('validate') / 'data_docs' / 'index.html'}):\n  - " + "\n  - ".join(failures)
        )
    log.info("validate: all %d expectations met on %d images", evaluated, len(images))
    return metrics


def main() -> None:
    run_stage(run, ValidateParams)


if __name__ == "__main__":
    main()

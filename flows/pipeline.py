"""The pipeline flow: the project's DVC stages as Prefect tasks, one task per stage.

    python -m flows.pipeline                          # like `dvc repro`
    python -m flows.pipeline --stages evaluate        # like `dvc repro evaluate`
    python -m flows.pipeline -f -S train.epochs=3     # like `dvc repro -f` after `-S` overrides

Each task runs `dvc repro --single-item <stage>` in DAG order (read from dvc.yaml through DVC), so
DVC decides what is up to date and writes dvc.lock exactly as `dvc repro` would. DVC is asked
once, up front, which stages are out of date (`dvc status`); a stage that is up to date and has
no upstream stage that ran in this flow is reported as skipped without starting DVC again, which
keeps a fully cached run close to plain `dvc repro` in time.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State
from prefect.tasks import exponential_backoff

from flows import dvc_runner
from flows.overrides import apply_overrides, read_params
from tlpipe.data.sources import SOURCES
from tlpipe.util.nested import flatten

# The metrics shown at the end of a run (stage name = reports/<name>/, README: "The pipeline"); when a
# pipeline has none of these stages, every stage's metrics are shown instead.
SUMMARY_STAGES = ("evaluate", "benchmark")

# Retrying helps only where the failure can be transient: ingest downloading its data (a source
# that downloads, tlpipe.data.sources: CIFAR-10 through Keras). A local archive, a validation
# failure or a training error fails the same way again.
DOWNLOAD_RETRIES = 3
DOWNLOAD_BACKOFF_S = 10  # 10 s, 20 s, 40 s


def retries_for(stage: str, params: dict[str, Any]) -> int:
    data = params.get("data") or {}
    source = SOURCES.get(data.get("source", "keras"))
    return DOWNLOAD_RETRIES if stage == "ingest" and source is not None and source.downloads else 0


@task(name="dvc-repro", task_run_name="{stage}", cache_policy=NO_CACHE)
def repro_stage(stage: str, root: str, force: bool = False, needed: bool = True) -> Any:
    """`dvc repro --single-item <stage>`; returns "ran", "restored" or "skipped".

    `needed=False` means DVC already said the stage is up to date and nothing upstream ran in
    this flow: the task reports it skipped without starting DVC again.
    """
    logger = get_run_logger()
    if not needed:
        logger.info("Stage '%s' is up to date (dvc status), skipping", stage)
        return Completed(name="Skipped", message="up to date", data="skipped")
    args = ["repro", "--single-item", *(["--force"] if force else []), stage]
    result = dvc_runner.run_dvc(args, root, logger)
    outcome = dvc_runner.stage_outcome(stage, result.lines) or "ran"
    if outcome == "skipped":
        return Completed(name="Skipped", message="up to date", data="skipped")
    if outcome == "restored":
        return Completed(name="Cached", message="restored from DVC's run cache", data="restored")
    return outcome


@flow(name="pipeline")
def pipeline(
    stages: list[str] | None = None,
    force: bool = False,
    overrides: list[str] | None = None,
    project_dir: str = ".",
) -> dict[str, str]:
    """Reproduce the DVC pipeline, one task per stage.

    Args:
        stages: stages to reproduce, with everything upstream of them (default: all).
        force: rerun the selected stages even if DVC finds them up to date (`dvc repro -f`).
        overrides: `-S` overrides applied to the params files first, e.g. ["train.epochs=3"].
            As with `dvc exp run -S`, the params file keeps the new values.
        project_dir: the DVC project's root.
    """
    logger = get_run_logger()
    root = Path(project_dir).resolve()
    if overrides:
        changed = apply_overrides(root, overrides)
        logger.info("Applied overrides %s to %s", list(overrides), ", ".join(changed))
    pipe = dvc_runner.read_pipeline(root)
    selected = pipe.select(stages)
    out_of_date = set(selected) if force else dvc_runner.changed_stages(root, selected)
    logger.info(
        "Stages in order: %s; out of date per dvc status: %s",
        ", ".join(selected),
        ", ".join(s for s in selected if s in out_of_date) or "none",
    )
    params = read_params(root)
    outcomes: dict[str, str] = {}
    seconds: dict[str, float] = {}
    ran: set[str] = set()
    try:
        for stage in selected:
            needed = force or stage in out_of_date or bool(pipe.upstream[stage] & ran)
            retries = retries_for(stage, params)
            run = repro_stage.with_options(
                retries=retries,
                retry_delay_seconds=exponential_backoff(DOWNLOAD_BACKOFF_S)(retries) if retries else 0,
            )
            start = time.perf_counter()
            # Called, not submitted: one stage at a time, as DVC's lock on the workspace requires.
            # A failure raises here, so nothing downstream of it runs.
            result = run(stage, str(root), force=force, needed=needed)
            # A task that returns a State (Skipped, Cached) hands the caller that State.
            outcomes[stage] = result.result() if isinstance(result, State) else result
            seconds[stage] = time.perf_counter() - start
            if outcomes[stage] != "skipped":
                ran.add(stage)
    finally:
        publish_stage_table(selected, outcomes, seconds)
    publish_metrics(root, pipe, selected)
    return outcomes


def publish_stage_table(selected: Sequence[str], outcomes: dict[str, str], seconds: dict[str, float]) -> None:
    rows = [
        {
            "stage": s,
            "outcome": outcomes.get(s, "failed" if s == _first_missing(selected, outcomes) else "not run"),
            "seconds": round(seconds[s], 2) if s in seconds else None,
        }
        for s in selected
    ]
    create_table_artifact(rows, key="pipeline-stages", description="What each DVC stage did in this run")


def _first_missing(selected: Sequence[str], outcomes: dict[str, str]) -> str | None:
    return next((s for s in selected if s not in outcomes), None)


def publish_metrics(root: Path, pipe: dvc_runner.Pipeline, selected: Sequence[str]) -> list[dict[str, Any]]:
    """A table artifact of the evaluation metrics and the benchmark headline (as DVC tracks them)."""
    shown = [s for s in selected if s in SUMMARY_STAGES] or list(selected)
    rows: list[dict[str, Any]] = []
    for stage in shown:
        for rel in pipe.metrics.get(stage, ()):
            path = root / rel
            if not path.is_file():
                continue
            for name, value in flatten(headline(stage, json.loads(path.read_text()))):
                rows.append({"stage": stage, "metric": name, "value": value})
    if rows:
        create_table_artifact(
            rows, key="pipeline-metrics", description=f"Metrics of {', '.join(shown)} (from dvc.yaml's metrics files)"
        )
    else:
        create_markdown_artifact("No metrics files yet.", key="pipeline-metrics")
    return rows


def headline(stage: str, metrics: Any) -> Any:
    """The benchmark's headline: throughput (images/s from the median batch time) at its headline
    batch size, and the speedups, as the benchmark stage's metrics.json holds them."""
    if stage != "benchmark" or not isinstance(metrics, dict) or "headline_batch" not in metrics:
        return metrics
    batch = f"b{metrics['headline_batch']}"
    out: dict[str, Any] = {"headline_batch": metrics["headline_batch"]}
    for key in ("throughput_median",):
        for model, per_batch in (metrics.get(key) or {}).items():
            if isinstance(per_batch, dict) and batch in per_batch:
                out[f"{key}.{model}"] = per_batch[batch]
    out["speedup"] = metrics.get("speedup") or {}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--stages", nargs="+", metavar="STAGE", help="stages to reproduce (and their upstream)")
    parser.add_argument("-f", "--force", action="store_true", help="rerun even if up to date")
    parser.add_argument(
        "-S", "--set-param", dest="overrides", action="append", metavar="KEY=VALUE", help="params override, repeatable"
    )
    parser.add_argument("-C", "--project-dir", default=".", help="the DVC project's root (default: .)")
    args = parser.parse_args(argv)
    logging.getLogger("prefect").setLevel(logging.INFO)
    state = pipeline(
        stages=args.stages, force=args.force, overrides=args.overrides, project_dir=args.project_dir, return_state=True
    )
    raise SystemExit(0 if state.is_completed() else 1)


if __name__ == "__main__":
    main()

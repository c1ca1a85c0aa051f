"""Batch prediction as a Prefect flow: stages.predict with Prefect's logs, run history, schedules
and a summary artifact (counts, throughput, the first unreadable images).

    python -m flows.predict path/to/images -o predictions.csv
    python -m flows.predict cifar-10.zip --folder test --set format=submission -o submission.csv

Relative paths are taken from the project directory (`-C`), whose params.yaml gives the
`predict` section (`--set key=value` overrides one key of it). An unreadable image does not fail
the run (it is on its row and in the artifact) unless `predict.on_error` is `fail`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tlpipe.config.params import Params, load_params, with_overrides
from tlpipe.paths import Paths
from tlpipe.predict.run import log as predict_log
from tlpipe.predict.run import predict

ARTIFACT_ERRORS = 20  # unreadable images listed in the artifact (all are in the summary file)


@contextmanager
def forwarded(logger: Any) -> Iterator[None]:
    """stages.predict's progress lines into the Prefect run's log."""

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logger.log(record.levelno, record.getMessage())

    handler = Forward(logging.INFO)
    predict_log.addHandler(handler)
    try:
        yield
    finally:
        predict_log.removeHandler(handler)


@task(name="predict-images", cache_policy=NO_CACHE)
def predict_images(
    images: str, output: str, project_dir: str, model: str | None, folder: str | None, settings: dict[str, Any]
) -> dict[str, Any]:
    root = Path(project_dir)
    params = load_params(Paths(root).params) if Paths(root).params.is_file() else Params()
    params = with_overrides(params, predict=settings) if settings else params
    with forwarded(get_run_logger()):
        return predict(
            images if Path(images).is_absolute() else str(root / images),  # a glob too
            root / output,
            params,
            Paths(root),
            model=root / model if model else None,
            folder=folder,
        )


@flow(name="predict", flow_run_name="predict {images}")
def predict_flow(
    images: str,
    output: str = "reports/predict/predictions.csv",
    project_dir: str = ".",
    model: str | None = None,
    folder: str | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Predict every image of `images` (a directory, an archive or a glob) into `output`.

    Args:
        images: the input; relative to `project_dir` when it exists there.
        output: the CSV to write (a summary JSON is written beside it).
        project_dir: the project whose params.yaml and models/ are used.
        model: an ONNX model instead of the one `predict.variant` names.
        folder: only the images under this folder of the input (Kaggle's zip: `test`).
        settings: `predict` params overriding params.yaml's, e.g. {"format": "submission"}.
    """
    summary = predict_images(images, output, project_dir, model, folder, settings or {})
    lines = [
        f"**{summary['images']:,} images** → `{summary['output']}` ({summary['format']}), "
        f"{summary['unreadable']:,} unreadable, {summary['resized']:,} resized",
        "",
        f"{summary['images_per_second']} images/s on {summary['provider']} ({summary['model']})",
    ]
    if summary["errors"]:
        lines += ["", "| file | why unreadable |", "|---|---|"]
        lines += [f"| `{e['file']}` | {e['error']} |" for e in summary["errors"][:ARTIFACT_ERRORS]]
    create_markdown_artifact("\n".join(lines), key="predict-summary", description="Batch prediction")
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.predict", description=__doc__.split("\n")[0])
    parser.add_argument("images", help="a directory, an archive (.zip/.tar/.7z, inner ones opened) or a glob")
    parser.add_argument("-o", "--output", default="reports/predict/predictions.csv")
    parser.add_argument("-C", "--project-dir", default=".", help="the project's root (default: .)")
    parser.add_argument("--model", help="an ONNX model (default: the one predict.variant names)")
    parser.add_argument("--folder", help="only the images under this folder of the input")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE", help="predict.KEY")
    args = parser.parse_args(argv)
    settings = {k: yaml.safe_load(v) for k, _, v in (s.partition("=") for s in args.settings)}
    state = predict_flow(
        args.images, args.output, args.project_dir, args.model, args.folder, settings, return_state=True
    )
    raise SystemExit(0 if state.is_completed() else 1)


if __name__ == "__main__":
    main()

"""Batch prediction: the exported ONNX model on unlabeled images, outside `dvc repro`.

    python -m stages.predict path/to/images -o predictions.csv          # a directory, archive or glob
    python -m stages.predict cifar-10.zip --folder test --format submission -o submission.csv
    python -m stages.predict 'photos/**/*.jpg' --variant int8 --probabilities

The command line of tlpipe.predict.run: flags override `predict.*` of params.yaml; bad input is
one line on stderr and exit status 1 (stages.cli).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from stages.cli import exit_on_bad_input, start_logging
from tlpipe.config.params import DEFAULT_PARAMS, Params, load_params, with_overrides
from tlpipe.export.variants import FP32, selectable_variants
from tlpipe.predict.run import predict
from tlpipe.util.quiet import quiet_entry_point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m stages.predict", description=__doc__.splitlines()[0])
    parser.add_argument("images", help="a directory, an archive (.zip/.tar/.tar.gz/.7z; inner ones opened) or a glob")
    parser.add_argument("-o", "--output", default="reports/predict/predictions.csv", help="the CSV to write")
    parser.add_argument("--model", help="an ONNX model (default: models/model.onnx or the predict.variant)")
    parser.add_argument("--folder", help="only the images under this folder of the input (e.g. test)")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file for predict.* (if it exists)")
    parser.add_argument("--format", choices=["table", "submission"])
    parser.add_argument("--variant", choices=[FP32, *selectable_variants()])
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--probabilities", action="store_true", default=None, help="add class probabilities")
    parser.add_argument("--on-error", choices=["report", "fail"], help="an unreadable image: its row, or fatal")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    quiet_entry_point()
    start_logging()
    args = parse_args(argv)
    keys = ("format", "variant", "batch_size", "top_k", "probabilities", "on_error")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    with exit_on_bad_input():
        params = load_params(args.params) if Path(args.params).is_file() else Params()
        params = with_overrides(params, predict=overrides) if overrides else params
        summary = predict(args.images, args.output, params, model=args.model, folder=args.folder)
    print(json.dumps({k: v for k, v in summary.items() if k != "errors"}))


if __name__ == "__main__":
    main()

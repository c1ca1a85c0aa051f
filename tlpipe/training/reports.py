"""reports/<stage>/ of the training stages, written whole or not at all.

- metrics.json (dvclive): the best epoch's scores and what the run decided, nothing that
  changes between two runs on the same inputs;
- plots/metrics/{train,val}/{loss,accuracy}.tsv and learning_rate.tsv (dvclive), per epoch;
- timings.json: wall times, throughput, where it ran and whether it resumed or hit a cache:
  facts of the run, not results, so nothing downstream depends on them;
- the text files the stage hands over (model summary, config).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from tlpipe.training.loop import LoopResult
from tlpipe.util.atomic import atomic_dir, json_text
from tlpipe.util.nested import flatten

TIMINGS_FILE = "timings.json"


def write_reports(
    directory: Path, result: LoopResult, *, extra: dict[str, Any], timings: dict[str, Any], texts: dict[str, str]
) -> dict[str, Any]:
    """Write the stage's reports; returns the metrics as written."""
    with atomic_dir(directory) as tmp:
        live = files_only_live(tmp)
        for row in result.history:
            for split, prefix in (("train", ""), ("val", "val_")):
                for metric in ("loss", "accuracy"):
                    if prefix + metric in row:
                        live.log_metric(f"{split}/{metric}", row[prefix + metric])
            live.log_metric("learning_rate", row["learning_rate"])
            live.next_step()
        best = result.history[result.best_epoch - 1]
        summary = {
            "best": {
                "epoch": result.best_epoch,
                "val_accuracy": best.get("val_accuracy", math.nan),
                "val_loss": best.get("val_loss", math.nan),
                "accuracy": best.get("accuracy", math.nan),
                "loss": best.get("loss", math.nan),
            },
            "epochs_run": len(result.history),
            "stopped_early": int(result.stopped_early),
            **extra,
        }
        for name, value in flatten(summary, sep="/"):
            if value is not None:
                live.log_metric(name, int(value) if isinstance(value, bool) else value, plot=False)
        live.end()
        run = {
            "seconds": round(result.seconds, 2),
            "epoch_seconds": [round(s, 2) for s in result.epoch_seconds],
            "samples_per_second": round(float(np.median(result.samples_per_second)), 1)
            if result.samples_per_second
            else None,
            "resumed": int(result.resumed_from is not None),
            **timings,
        }
        (tmp / TIMINGS_FILE).write_text(json_text(run))
        for name, text in texts.items():
            (tmp / name).write_text(text)
        metrics = json.loads((tmp / "metrics.json").read_text())
    return metrics


def files_only_live(directory: Path) -> Any:
    """dvclive writing metrics.json and the per-epoch .tsv plots, nothing else.

    No dvc.yaml of its own and no experiment commits: the project's dvc.yaml declares these
    files and `dvc exp run` records experiments. Its DVC/git hook-up is skipped too: dvclive 3.49
    raises from it in a git repo without commits (scm.get_rev(): "Empty git repo"), which made a
    first `dvc repro` in a fresh repo fail; skipping it is dvclive's own path when that hook-up
    fails with a DvcException.
    """
    from dvclive import Live

    class FilesOnlyLive(Live):
        def _init_dvc(self) -> None:
            return None

    return FilesOnlyLive(dir=str(directory), save_dvc_exp=False, dvcyaml=None, report=None)

"""The final fit (finetune.train_on_val): validation images join training, the last epoch is kept."""

from __future__ import annotations

import json

import pytest

from stages import finetune, train
from stages.params import ParamsError, parse_params
from stages.paths import Paths
from tests.test_train import tiny_params


def test_train_on_val_needs_early_stopping_off() -> None:
    with pytest.raises(ParamsError, match="finetune.train_on_val trains on the validation images"):
        parse_params({"finetune": {"train_on_val": True}})


def test_the_final_fit_trains_on_train_and_val_and_keeps_the_last_epoch(prepared_dir) -> None:
    paths = Paths(prepared_dir)
    train.run(tiny_params(), paths)
    params = tiny_params(
        finetune={"train_on_val": True, "early_stopping": {"enabled": False}, "epochs": 2, "steps_per_epoch": None}
    )
    metrics = finetune.run(params, paths)
    # 20 train + 5 val images per class, 3 classes, batches of 8: 9 steps instead of 7.
    tsv = (paths.reports("finetune") / "plots" / "metrics" / "learning_rate.tsv").read_text().splitlines()
    assert len(tsv) == 1 + 2
    assert metrics["train_on_val"] == 1 and metrics["best"]["epoch"] == 2 == metrics["epochs_run"]
    timings = json.loads((paths.reports("finetune") / "timings.json").read_text())
    assert len(timings["epoch_seconds"]) == 2

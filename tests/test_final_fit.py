"""The final fit (finetune.train_on_val): validation images join training, the last epoch is kept."""

from __future__ import annotations

import json

from stages import finetune, train
from stages.paths import Paths
from tests.test_train import tiny_params


def test_the_final_fit_trains_on_train_and_val_and_keeps_the_last_epoch(prepared_dir) -> None:
    paths = Paths(prepared_dir)
    train.run(tiny_params(), paths)
    # Early stopping as it would stop after epoch 2 (nothing improves by 0.99): not applied.
    stopping = {"enabled": True, "patience": 1, "min_delta": 0.99}
    params = tiny_params(
        finetune={"train_on_val": True, "early_stopping": stopping, "epochs": 3, "steps_per_epoch": None}
    )
    metrics = finetune.run(params, paths)
    # 20 train + 5 val images per class, 3 classes, batches of 8: 9 steps instead of 7.
    tsv = (paths.reports("finetune") / "plots" / "metrics" / "learning_rate.tsv").read_text().splitlines()
    assert len(tsv) == 1 + 3
    assert metrics["train_on_val"] == 1 and metrics["best"]["epoch"] == 3 == metrics["epochs_run"]
    timings = json.loads((paths.reports("finetune") / "timings.json").read_text())
    assert len(timings["epoch_seconds"]) == 3

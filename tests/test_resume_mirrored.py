"""Resume under `runtime.strategy: mirrored` (the GPU preset's strategy): a fine-tune interrupted
mid-epoch on two replicas continues from its backup and ends bit-identical to a run never
interrupted. Two logical CPUs stand in for two GPUs: the MirroredStrategy code path is the same,
and the optimizer's variables must be created inside `strategy.scope()` on both.

Logical devices can only be configured before TensorFlow initialises its runtime, which the test
process has long done; so the whole scenario runs in one fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCENARIO = r"""
import json, shutil, sys
from pathlib import Path

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np

from stages import finetune
from tlpipe.paths import Paths
from tests.conftest import write_prepared
from tests.test_finetune import Killed, killer
from tests.test_train import tiny_params, train_run, weights_of

root = Path(sys.argv[1])
params = tiny_params(runtime={"strategy": "mirrored"}, train={"epochs": 1})
write_prepared(root / "a" / "data" / "prepared", ["cat", "dog", "frog"])
train_run(params, Paths(root / "a"))
shutil.copytree(root / "a", root / "b")

reference = finetune.run(params, Paths(root / "a"))
report = {"replicas": json.loads((root / "a/reports/finetune/timings.json").read_text())["replicas"]}
# Interrupted in epoch 2 after its 5th step (backups every 2 steps: the last one at step 4).
try:
    finetune.run(params, Paths(root / "b"), callbacks=[killer(7 + 5)])
    report["killed"] = False
except Killed:
    report["killed"] = True
backup = json.loads((root / "b/data/checkpoints/finetune/backup.json").read_text())
report["backup_at"] = [backup["epoch"], backup["step"]]
try:
    resumed = finetune.run(params, Paths(root / "b"))
except Exception as err:
    report["resume_error"] = f"{type(err).__name__}: {err}"
else:
    report["resumed"] = json.loads((root / "b/reports/finetune/timings.json").read_text())["resumed"]
    a, b = weights_of(Paths(root / "a").model), weights_of(Paths(root / "b").model)
    report["weights"] = len(a)
    report["different_weights"] = sum(not np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    report["same_metrics"] = resumed["best"] == reference["best"] and resumed["val"] == reference["val"]
print("REPORT " + json.dumps(report))
"""


def test_a_mirrored_finetune_interrupted_mid_epoch_resumes_bit_identical(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run(
        [sys.executable, "-c", SCENARIO, str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    report = json.loads(lines[-1].removeprefix("REPORT "))
    assert report["replicas"] == 2 and report["killed"] and report["backup_at"] == [1, 4], report
    assert "resume_error" not in report, report["resume_error"]
    assert report["resumed"] == 1
    assert report["weights"] > 0 and report["different_weights"] == 0, report
    assert report["same_metrics"], report

"""The finetune stage through the real code: unfreezing, frozen BatchNorm, resume after a kill."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_prepared
from tests.test_train import tiny_params, train_run, weights_of, written
from tlpipe.paths import Paths


class Killed(RuntimeError):
    """Stands in for a kill: raised from inside the training loop, so nothing after it runs."""


def killer(after_steps: int):
    import keras

    class Kill(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.steps = 0

        def on_train_batch_end(self, batch: int, logs: object = None) -> None:
            self.steps += 1
            if self.steps == after_steps:
                raise Killed(f"killed after {after_steps} steps")

    return Kill()


@pytest.fixture(scope="module")
def head_project(tmp_path_factory) -> Path:
    """Prepared data and models/head.keras from the train stage, built once for this module."""
    root = tmp_path_factory.mktemp("head_project")
    write_prepared(root / "data" / "prepared", ["cat", "dog", "frog"])
    train_run(tiny_params(), Paths(root))
    return root


@pytest.fixture
def trained(head_project: Path, tmp_path: Path) -> Path:
    """A private copy of the trained project: tests may write into it."""
    root = tmp_path / "project"
    shutil.copytree(head_project, root)
    return root


def timings(root: Path) -> dict:
    return json.loads((Paths(root).reports("finetune") / "timings.json").read_text())


def finetune_run(params, paths: Paths, **kwargs) -> dict:
    from stages import finetune

    return finetune.run(params, paths, **kwargs)


def test_finetune_trains_the_top_blocks_keeps_batchnorm_frozen_and_resumes_after_a_kill(
    trained: Path, tmp_path: Path, caplog
) -> None:
    import keras

    # An uninterrupted run on a copy of the project: the reference.
    other = tmp_path / "uninterrupted"
    shutil.copytree(trained, other)
    params = tiny_params()  # 7 steps per epoch, backups every 2 steps
    reference = finetune_run(params, Paths(other))

    head = keras.models.load_model(Paths(other).head_model).get_layer("backbone")
    tuned = keras.models.load_model(Paths(other).model).get_layer("backbone")
    # top_blocks=2 of MobileNetV2: block_16 and the top 1×1 conv changed; block_15 and below did not.
    assert reference["unfrozen"]["first_block"] == "block_16" and reference["unfrozen"]["blocks"] == 2
    changed = {
        layer.name
        for layer, before in zip(tuned.layers, head.layers, strict=False)
        if any(not np.array_equal(a, b) for a, b in zip(layer.get_weights(), before.get_weights(), strict=False))
    }
    assert "Conv_1" in changed and "block_16_project" in changed
    assert not any(name.startswith(("block_15", "block_1_", "Conv1")) for name in changed), changed
    # BatchNorm: frozen, moving statistics untouched.
    assert not any(type(tuned.get_layer(n)).__name__ == "BatchNormalization" for n in changed)
    assert reference["enabled"] == 1 and reference["epochs_run"] == 2 and timings(other)["resumed"] == 0
    reports = Paths(other).reports("finetune")
    assert json.loads((reports / "metrics.json").read_text()) == reference
    assert (reports / "plots" / "metrics" / "val" / "accuracy.tsv").is_file()
    assert "Trainable params" in (reports / "summary.txt").read_text()
    assert not (Paths(other).checkpoints / "finetune").exists()  # backups go once the model is saved

    # The same run killed in epoch 2 after step 5 (last backup: step 4), then rerun.
    paths = Paths(trained)
    with pytest.raises(Killed):
        finetune_run(params, paths, callbacks=[killer(7 + 5)])
    assert not paths.model.exists() and not paths.reports("finetune").exists()  # nothing half-written
    state = json.loads((paths.checkpoints / "finetune" / "backup.json").read_text())
    assert (state["epoch"], state["step"]) == (1, 4)

    with caplog.at_level(logging.INFO, logger="tlpipe"):
        resumed = finetune_run(params, paths)
    assert "finetune: resuming from epoch 2 step 4" in caplog.text
    assert timings(trained)["resumed"] == 1 and resumed["epochs_run"] == 2
    # Ends exactly as if never killed: same batches, optimizer state, dropout RNG, schedule.
    for a, b in zip(weights_of(paths.model), weights_of(Paths(other).model), strict=False):
        np.testing.assert_array_equal(a, b)
    assert resumed["best"] == reference["best"] and resumed["val"] == reference["val"]


def test_a_backup_made_under_other_params_is_discarded_not_resumed(trained: Path, caplog) -> None:
    paths = Paths(trained)
    with pytest.raises(Killed):
        finetune_run(tiny_params(), paths, callbacks=[killer(3)])
    assert (paths.checkpoints / "finetune" / "backup.json").is_file()

    with caplog.at_level(logging.INFO, logger="tlpipe"):
        finetune_run(tiny_params(finetune={"learning_rate": 3e-4}), paths)
    assert "discarding backup" in caplog.text and "it belongs to other params" in caplog.text
    assert "resuming" not in caplog.text and timings(trained)["resumed"] == 0


@pytest.mark.parametrize(
    "unfreeze, message",
    [
        (
            {"top_blocks": None, "top_layers": 500},
            r"finetune.unfreeze.top_layers=500 is beyond the depth "
            r"of backbone 'mobilenetv2': expected at most 153 layers",
        ),
        ({"top_blocks": 40}, r"finetune.unfreeze.top_blocks=40 is beyond the 19 blocks of backbone 'mobilenetv2'"),
        (
            {"top_blocks": None, "from_block": "mixed9"},
            r"finetune.unfreeze.from_block='mixed9' is not a block of "
            r"backbone 'mobilenetv2'; expected one of: stem, block_0, block_1",
        ),
    ],
)
def test_unfreezing_beyond_the_backbone_is_a_clear_error(trained: Path, unfreeze: dict, message: str) -> None:
    before = written(trained)
    with pytest.raises(ValueError, match=message):
        finetune_run(tiny_params(finetune={"unfreeze": unfreeze}), Paths(trained))
    assert written(trained) == before


def test_finetune_disabled_makes_the_head_the_model(trained: Path) -> None:
    paths = Paths(trained)
    metrics = finetune_run(tiny_params(finetune={"enabled": False}), paths)
    assert paths.model.read_bytes() == paths.head_model.read_bytes()
    assert metrics["enabled"] == 0 and metrics["best"]["epoch"] >= 1


def test_finetune_without_a_head_model_says_what_to_run(prepared_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"head.keras: not found; run the train stage first"):
        finetune_run(tiny_params(), Paths(prepared_dir))


def test_cli_trains_and_finetunes_with_mirrored_strategy_on_two_logical_cpus(prepared_dir: Path) -> None:
    """`python -m stages.train` and `stages.finetune` (params.yaml, default paths) under
    MirroredStrategy over two logical CPU devices: the multi-device code path, without a GPU."""
    import yaml

    from tests.test_train import run_cli

    params = tiny_params(runtime={"strategy": "mirrored"}, train={"epochs": 1}, finetune={"epochs": 1})
    params = params.model_dump(by_alias=True)
    (prepared_dir / "params.yaml").write_text(yaml.safe_dump(params))
    two_cpus = (
        "import tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "from stages.train import main as train_main\n"
        "train_main()\n"
    )
    proc = run_cli("stages.finetune", prepared_dir, prelude=two_cpus)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for stage in ("train", "finetune"):
        config = json.loads((prepared_dir / "reports" / stage / "config.json").read_text())
        run = json.loads((prepared_dir / "reports" / stage / "timings.json").read_text())
        assert config["runtime"]["strategy"] == "MirroredStrategy" and run["replicas"] == 2
    assert (prepared_dir / "models" / "model.keras").is_file()
    assert "finetune epoch 1/1" in proc.stderr  # the per-epoch log line reaches the console

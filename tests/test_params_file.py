"""params.yaml survives DVC's own override writer (the one `dvc exp run -S` uses), key after key."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml
from dvc.utils.hydra import apply_overrides

from tests.conftest import REPO
from tlpipe.config.params import load_params
from tlpipe.config.presets import hydra_value, leaves

# Lists the schema allows empty: written as [] (`export.variants=[]` after another write once
# turned the old flow-style `variants: [fp16, int8]` and the `int8:` block below it into invalid YAML).
EMPTY_OK = {"export.variants", "model.head_units"}
# Keys whose other values the schema refuses alone (a range, a rule across keys): written as they are.
SAME = {"export.opset", "finetune.unfreeze.from_layer", "finetune.train_on_val"}


def other_value(key: str, value: Any) -> Any:
    """Another value the schema accepts for `key`: a flipped flag, a shorter list, a smaller number."""
    if key in SAME or value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return not value
    if isinstance(value, list):
        return [] if key in EMPTY_OK else value[:1]
    if isinstance(value, int):
        return max(1, value // 2) if value else value
    return value / 2


def test_every_key_survives_dvc_writer_one_override_after_another(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    original = yaml.safe_load(params.read_text())
    every = leaves(original)
    writes = [f"{key}={hydra_value(other_value(key, value))}" for key, value in every]
    writes += [  # whole nested mappings too
        "data.limit={train:10,val:5,test:5}",
        "finetune.early_stopping={enabled:false,monitor:loss,patience:1,min_delta:0.01}",
    ]
    writes += [f"{key}={hydra_value(value)}" for key, value in every]  # and every value back
    for override in writes:
        apply_overrides(str(params), [override])
        load_params(params)  # parses and validates after every single write: a broken file fails here
    assert yaml.safe_load(params.read_text()) == original
    assert "# Test-time augmentation inside the shipped model" in params.read_text()  # comments survive


def test_the_flows_apply_overrides_in_one_call_of_dvc_writer(tmp_path: Path) -> None:
    from flows.overrides import apply_overrides as flow_apply

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    flow_apply(tmp_path, ["finetune.epochs=1", "export.variants=[]", "benchmark.rounds=1"])
    applied = load_params(tmp_path / "params.yaml")
    assert (applied.finetune.epochs, applied.export.variants, applied.benchmark.rounds) == (1, [], 1)

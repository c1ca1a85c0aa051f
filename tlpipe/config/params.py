"""The typed schema of params.yaml: the only source of hyperparameters.

Every section forbids unknown keys, so a typo (`learning_rat`) is an error naming the key
instead of a silently ignored setting. `load_params` turns pydantic's errors into one
`ParamsError` whose message names the file, the dotted key and the value received. The sections
themselves live in params_data (ingest, validate), params_training (model, train, finetune,
runtime) and params_outputs (evaluate, export, benchmark, predict).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError

from tlpipe.config.base import ParamsError, Section
from tlpipe.config.data import DataParams, ValidateParams
from tlpipe.config.outputs import BenchmarkParams, EvaluateParams, ExportParams, PredictParams
from tlpipe.config.training import FinetuneParams, ModelParams, RuntimeParams, TrainParams

DEFAULT_PARAMS = Path("params.yaml")

# Keys that change how a run goes, never what it produces: dvc.yaml does not list them (changing
# them reruns nothing) and a resumed fine-tuning run accepts a backup made under other values.
RESULT_NEUTRAL_KEYS = frozenset({"runtime.log_every_seconds", "finetune.backup_every_steps"})


class Params(Section):
    seed: int = Field(42, ge=0)
    backbone: str = "mobilenetv2"
    # Test-time augmentation inside the shipped model (evaluate, export, benchmark; tlpipe.model.tta).
    tta: Literal["none", "flip"] = "none"
    data: DataParams = DataParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    finetune: FinetuneParams = FinetuneParams()
    runtime: RuntimeParams = RuntimeParams()
    evaluate: EvaluateParams = EvaluateParams()
    export: ExportParams = ExportParams()
    benchmark: BenchmarkParams = BenchmarkParams()
    predict: PredictParams = PredictParams()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {e['input']!r}); check the spelling against the schema")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e['input']!r})")
    return "\n".join(lines)


def parse_params(raw: dict[str, Any] | None, source: str = "params") -> Params:
    """Validate a params mapping (as read from YAML) into `Params`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_errors(err, source)) from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    return parse_params(raw, str(path))


def with_overrides(params: Params, **sections: Any) -> Params:
    """A copy of `params` with nested overrides, validated again (used by tests and flows)."""
    raw = params.model_dump(by_alias=True)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = deep_merge(raw[key], value)
        else:
            raw[key] = value
    return parse_params(raw, "overrides")


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in, nested mappings key by key."""
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out

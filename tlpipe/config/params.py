"""The typed schema of params.yaml, whole: the only source of hyperparameters.

`Params` holds every section, for the code that runs outside DVC stages (flows, predict, presets,
tests); a DVC stage reads only its own sections (tlpipe.config.load.load_sections). Each section
lives in its own module (tlpipe.config.<section>); reading and error messages are
tlpipe.config.load's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from tlpipe.config.base import ParamsError
from tlpipe.config.benchmark import BenchmarkParams
from tlpipe.config.data import DataParams
from tlpipe.config.evaluate import EvaluateParams
from tlpipe.config.export import ExportParams
from tlpipe.config.finetune import FinetuneParams
from tlpipe.config.load import (
    DEFAULT_PARAMS,
    RESULT_NEUTRAL_KEYS,
    Root,
    deep_merge,
    read_params_file,
    validate,
)
from tlpipe.config.model import ModelParams
from tlpipe.config.predict import PredictParams
from tlpipe.config.runtime import RuntimeParams
from tlpipe.config.train import TrainParams
from tlpipe.config.validate import ValidateParams

__all__ = [
    "DEFAULT_PARAMS",
    "RESULT_NEUTRAL_KEYS",
    "Params",
    "ParamsError",
    "deep_merge",
    "load_params",
    "parse_params",
]


class Params(Root):
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


def parse_params(raw: dict[str, Any] | None, source: str = "params") -> Params:
    """Validate a params mapping (as read from YAML) into `Params`."""
    return validate(Params, raw, source)


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml, every section."""
    return parse_params(read_params_file(path), str(path))


def with_overrides(params: Params, **sections: Any) -> Params:
    """A copy of `params` with nested overrides, validated again (used by tests and flows)."""
    raw = params.model_dump(by_alias=True)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = deep_merge(raw[key], value)
        else:
            raw[key] = value
    return parse_params(raw, "overrides")

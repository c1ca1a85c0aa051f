"""Which params keys a stage really reads, recorded while it runs.

dvc.yaml lists, per stage, the params keys the stage reads; tests/test_dvc_yaml.py checks that
list against what the stage code reads when it runs. With TLPIPE_TRACE_READS=<dir> set, a stage
started by `python -m stages.<name>` (stages.cli) reads its params through `Tracked` and writes
the dotted keys it read to <dir>/<name>.json when it ends.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel

TRACE_ENV = "TLPIPE_TRACE_READS"


class Tracked:
    """A read-only view of a params model that records every leaf key read through it.

    Attribute reads of sub-sections return tracked sub-sections; reads of values record the
    dotted key (aliases used, so `validate_` records as `validate`). `model_dump` records every
    leaf it returns.
    """

    __slots__ = ("_model", "_prefix", "_reads")

    def __init__(self, model: BaseModel, reads: set[str], prefix: str = "") -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_reads", reads)
        object.__setattr__(self, "_prefix", prefix)

    def __getattr__(self, name: str) -> Any:
        model = object.__getattribute__(self, "_model")
        value = getattr(model, name)
        fields = type(model).model_fields
        if name not in fields:
            return value
        key = object.__getattribute__(self, "_prefix") + (fields[name].alias or name)
        reads = object.__getattribute__(self, "_reads")
        if isinstance(value, BaseModel):
            return Tracked(value, reads, key + ".")
        reads.add(key)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("params are read-only")

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        model = object.__getattribute__(self, "_model")
        dumped = model.model_dump(**kwargs)
        aliased = model.model_dump(**{**kwargs, "by_alias": True})
        _record_leaves(aliased, object.__getattribute__(self, "_prefix"), object.__getattribute__(self, "_reads"))
        return dumped

    def __repr__(self) -> str:
        return f"Tracked({object.__getattribute__(self, '_model')!r})"


def _record_leaves(value: Any, prefix: str, reads: set[str]) -> None:
    if isinstance(value, dict) and value:
        for k, v in value.items():
            _record_leaves(v, f"{prefix}{k}.", reads)
    elif prefix:
        reads.add(prefix[:-1])


def trace_dir() -> Path | None:
    value = os.environ.get(TRACE_ENV)
    return Path(value) if value else None


def write_reads(directory: Path, stage: str, reads: set[str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{stage}.json").write_text(json.dumps(sorted(reads), indent=1) + "\n")

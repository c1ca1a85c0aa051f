"""Reading params.yaml: the file, its top-level keys, and validation of the sections a caller reads.

Every section forbids unknown keys, so a typo (`learning_rat`) is an error naming the key instead of
a silently ignored setting; `parse_sections` turns pydantic's errors into one `ParamsError` whose
message names the file, the dotted key and the value received.

A DVC stage validates the sections it reads and no other (`load_sections(path, DataParams)`): its
code, and so its dvc.yaml deps, are those section modules alone, and an edit to a section it does
not read (`predict`, read by no stage) reruns nothing. The other sections' keys are still known
(`SECTIONS`): an unknown top-level key is an error for every stage. tlpipe.config.params puts all
sections together (`Params`) for the code outside DVC stages (flows, predict, presets).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from tlpipe.config.base import ParamsError, Section
from tlpipe.paths import PARAMS_FILE

DEFAULT_PARAMS = Path(PARAMS_FILE)  # in the working directory: the project root, for a stage

# Keys that change how a run goes, never what it produces: dvc.yaml does not list them (changing
# them reruns nothing) and a resumed fine-tuning run accepts a backup made under other values.
RESULT_NEUTRAL_KEYS = frozenset({"runtime.log_every_seconds", "finetune.backup_every_steps"})

# The sections of params.yaml, in the file's order.
SECTIONS = ("data", "validate", "model", "train", "finetune", "runtime", "evaluate", "export", "benchmark", "predict")


class Root(Section):
    """The top-level keys every stage may read."""

    seed: int = Field(42, ge=0)
    backbone: str = "mobilenetv2"
    # Test-time augmentation inside the shipped model (evaluate, export, benchmark; tlpipe.model.tta).
    tta: Literal["none", "flip"] = "none"

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def field_name(section: str) -> str:
    """The attribute a section is read by: its key, but `validate_` (BaseModel has a `validate`)."""
    return f"{section}_" if hasattr(BaseModel, section) else section


def section_field(cls: type[Section]) -> tuple[type[Section], Any]:
    """The field definition of a section: defaults to the section's defaults, read by its key."""
    key: str = cls.section
    return cls, Field(cls(), alias=key) if field_name(key) != key else cls()


@functools.cache
def schema(*sections: type[Section]) -> type[Root]:
    """The params model that validates `sections` and accepts the others' keys unread."""
    by_key: dict[str, type[Section]] = {cls.section: cls for cls in sections}
    unknown = set(by_key) - set(SECTIONS)
    if unknown:
        raise ValueError(f"not sections of {PARAMS_FILE}: {sorted(unknown)}")
    fields: dict[str, Any] = {}
    for key in SECTIONS:
        if key in by_key:
            fields[field_name(key)] = section_field(by_key[key])
        else:  # not read: its keys are known, its values this caller's business not
            fields[field_name(key)] = (Any, Field(None, alias=key))
    return create_model("Params", __base__=Root, **fields)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (value {e['input']!r}); check the spelling against the schema")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e['input']!r})")
    return "\n".join(lines)


def validate(model: type[BaseModel], raw: dict[str, Any] | None, source: str) -> Any:
    """Validate a params mapping (as read from YAML) into `model`, with ParamsError's messages."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ParamsError(_format_errors(err, source)) from None


def read_params_file(path: str | Path = DEFAULT_PARAMS) -> Any:
    """The YAML of a params file, as read."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None


def load_sections(path: str | Path, *sections: type[Section]) -> Any:
    """params.yaml with the top-level keys and `sections` validated (the others' keys accepted)."""
    return validate(schema(*sections), read_params_file(path), str(path))


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`base` with `update` merged in, nested mappings key by key."""
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out

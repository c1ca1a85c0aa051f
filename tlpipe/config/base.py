"""What every params section shares: unknown keys are errors, values are frozen."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or violates the schema."""


class Section(BaseModel):
    # A top-level section's key in params.yaml (tlpipe.config.load.SECTIONS); nested ones have none.
    section: ClassVar[str]

    model_config = ConfigDict(extra="forbid", frozen=True)


def distinct_providers(cls: type, v: list[str]) -> list[str]:
    """The validator of a `providers` list (benchmark, predict): not empty, no repeats."""
    if not v or len(set(v)) != len(v):
        raise ValueError(f"providers must be a non-empty list without repeats, got {v}")
    return v

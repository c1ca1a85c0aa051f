"""What every params section shares: unknown keys are errors, values are frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ParamsError(ValueError):
    """params.yaml is missing, unreadable or violates the schema."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

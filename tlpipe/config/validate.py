"""params.yaml section `validate`: what the validate stage checks in the prepared data."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tlpipe.config.base import Section


class ValidateParams(Section):
    section: ClassVar[str] = "validate"

    # Largest allowed relative deviation of a class's count from the mean class count.
    class_balance_tolerance: float = Field(0.1, ge=0)
    # Per-image pixel statistics (0..255 scale): a blank or constant image falls outside.
    pixel_mean_min: float = Field(2.0, ge=0, le=255)
    pixel_mean_max: float = Field(253.0, ge=0, le=255)
    pixel_std_min: float = Field(2.0, ge=0)
    # Fraction of images allowed to violate the pixel-statistics expectations.
    pixel_stats_mostly: float = Field(0.999, gt=0, le=1)

"""Where every stage reads and writes, relative to one project root.

Stage name = module name = params section = `reports/<name>/` (DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def features(self) -> Path:
        return self.root / "data" / "features"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def head_model(self) -> Path:
        return self.models / "head.keras"

    @property
    def model(self) -> Path:
        return self.models / "model.keras"

    @property
    def onnx_model(self) -> Path:
        return self.models / "model.onnx"

    @property
    def checkpoints(self) -> Path:
        # Resume state for interrupted fine-tuning; outside the DVC outs on purpose.
        return self.root / "data" / "checkpoints"

    def reports(self, stage: str) -> Path:
        return self.root / "reports" / stage

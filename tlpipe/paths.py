"""Where every stage reads and writes, relative to one project root.

Stage name = module name = params section = `reports/<name>/`. Two caches live outside DVC's
outputs, so that DVC keeps a run cache for the stages that use them and never deletes them:
the feature cache (TLPIPE_FEATURE_CACHE, default data/features) and fine-tuning's resume state
(TLPIPE_CHECKPOINTS, default data/checkpoints).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FEATURE_CACHE_ENV = "TLPIPE_FEATURE_CACHE"
CHECKPOINTS_ENV = "TLPIPE_CHECKPOINTS"
# The params file, the one name every reader uses (tlpipe.config.load, flows).
PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    @property
    def params(self) -> Path:
        return self.root / PARAMS_FILE

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def features(self) -> Path:
        return Path(os.environ.get(FEATURE_CACHE_ENV) or self.root / "data" / "features")

    @property
    def checkpoints(self) -> Path:
        # Resume state for interrupted fine-tuning.
        return Path(os.environ.get(CHECKPOINTS_ENV) or self.root / "data" / "checkpoints")

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
    def variants(self) -> Path:
        return self.models / "variants"

    def onnx_variant(self, variant: str) -> Path:
        """An exported model: fp32 is models/model.onnx itself, the others models/variants/model.<variant>.onnx."""
        return self.onnx_model if variant == "fp32" else self.variants / f"model.{variant}.onnx"

    def variant_files(self) -> dict[str, Path]:
        """The variants the export stage wrote, by name (onnx_variant's file names read back), in name order."""
        return {f.name.split(".")[1]: f for f in sorted(self.variants.glob("model.*.onnx"))}

    def reports(self, stage: str) -> Path:
        return self.root / "reports" / stage

    def resolve(self, value: str | Path) -> Path:
        """A path from params: absolute as given, relative to the project root otherwise.

        In a copy that `dvc exp run --temp` or DVC's queue makes (<project>/.dvc/tmp/exps/<tmp>/),
        relative paths are taken from the project the experiment came from, so a value like
        `../shared/weights` means the same files in the workspace and in its copies.
        """
        path = Path(value).expanduser()
        if path.is_absolute():
            return path
        return (origin_root(self.root.resolve()) / path).resolve()


def origin_root(root: Path) -> Path:
    """The project a DVC experiment copy was made from (root itself when it is no such copy).

    DVC puts the queue's copies in <project>/.dvc/tmp/exps/<tmp>/ and `dvc exp run --temp`'s in
    <project>/.dvc/tmp/exps/standalone/<tmp>/.
    """
    parts = root.parts
    for depth in (4, 5):
        if len(parts) > depth and parts[-depth : -depth + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:-depth])
    return root

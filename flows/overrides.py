"""`-S` overrides (`train.epochs=3`, `backbone=mobilenet`, `params.yaml:seed=1`) with DVC's own semantics.

`dvc exp run -S` parses overrides with Hydra's grammar and rewrites the params file in place,
keeping its comments. The pipeline flow does the same through the same DVC functions, so that an
override means exactly what it means on the command line, but checks the result against the
params schema (tlpipe/config/params.py) *before* touching the file: a typo fails here, naming the
override, instead of leaving a broken params.yaml or failing an hour later in a stage.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from tlpipe.paths import PARAMS_FILE as DEFAULT_PARAMS_FILE
from tlpipe.util.errors import first_line


class OverrideError(ValueError):
    """An override string that is malformed, names an unknown key, or gives an invalid value."""


def group_by_file(overrides: Sequence[str]) -> dict[str, list[str]]:
    """`[file:]key=value` strings grouped by params file, as `dvc exp run -S` does."""
    from dvc.utils.cli_parse import to_path_overrides

    for o in overrides:
        if not isinstance(o, str) or not o.strip():
            raise OverrideError(f"override {o!r}: expected a string like 'train.epochs=3'")
    return to_path_overrides(overrides)


def check_syntax(overrides: Sequence[str]) -> dict[str, list[str]]:
    """Parse each override on its own, so that an error names the one at fault."""
    from dvc.utils.hydra import to_hydra_overrides

    grouped = group_by_file(overrides)
    for path, items in grouped.items():
        for item in items:
            try:
                parsed = to_hydra_overrides([item])
            except Exception as err:  # noqa: BLE001 - hydra's OverrideParseException and friends
                raise OverrideError(
                    f"override {item!r}{_in(path)} is malformed ({first_line(err)}); expected key=value, "
                    "e.g. 'train.epochs=3' (Hydra override syntax, as in `dvc exp run -S`)"
                ) from None
            if any(p.is_sweep_override() for p in parsed):
                raise OverrideError(f"override {item!r}{_in(path)} is a sweep; give one value per run")
    return grouped


def override_keys(overrides: Sequence[str]) -> dict[str, list[str]]:
    """The params keys that overrides set, by file: {"params.yaml": ["backbone", "model.alpha"]}."""
    return {
        path: [item.split("=", 1)[0].lstrip("+~") for item in items] for path, items in check_syntax(overrides).items()
    }


def apply_overrides(root: str | Path, overrides: Sequence[str], dry_run: bool = False) -> list[str]:
    """Apply `overrides` to the params files under `root`, as `dvc exp run -S` would.

    Each file is rewritten on a copy first, with all of its overrides in one call of DVC's writer
    (as `dvc exp run -S a -S b` does: two successive calls once turned a flow-style list followed
    by a block into invalid YAML); params.yaml is validated against the schema (and the backbone
    against the registry); only then are the files replaced (never with `dry_run`, which only
    checks). Returns the files changed.
    """
    root = Path(root)
    grouped = check_syntax(overrides)
    staged: list[tuple[Path, Path]] = []
    with tempfile.TemporaryDirectory(prefix="overrides-") as tmp:
        for rel, items in grouped.items():
            target = root / rel
            if not target.is_file():
                raise OverrideError(f"override {items[0]!r}: params file {target} not found")
            for item in items:
                # Each alone first, on a scratch copy: Hydra's errors do not say which override they are about.
                _write(target, Path(tmp) / f"check{target.suffix}", [item], rel)
            copy = Path(tmp) / f"{len(staged)}{target.suffix}"
            _write(target, copy, items, rel)
            if Path(rel) == Path(DEFAULT_PARAMS_FILE):
                check_params(copy, overrides)
            staged.append((copy, target))
        for copy, target in staged:
            if not dry_run:
                shutil.copyfile(copy, target)
    return [str(target.relative_to(root)) for _, target in staged]


def _write(source: Path, copy: Path, items: Sequence[str], rel: str) -> None:
    """`source` with `items` applied by DVC's own writer, into `copy`."""
    from dvc.utils.hydra import apply_overrides as dvc_apply

    shutil.copyfile(source, copy)
    try:
        dvc_apply(copy, list(items))
    except Exception as err:  # noqa: BLE001 - DVC wraps Hydra's errors in many types
        cause = err.__cause__ or err
        label = f" {items[0]!r}" if len(items) == 1 else f"s {list(items)}"
        raise OverrideError(f"override{label}{_in(rel)}: {_one_line(cause)}") from None


def check_params(path: Path, overrides: Sequence[str] = ()) -> None:
    """Validate a params file against the schema and the backbone registry."""
    from tlpipe.config.params import ParamsError, load_params

    try:
        params = load_params(path)
    except ParamsError as err:
        # The schema names the key; say which overrides produced it and drop the scratch path.
        message = str(err).split(":", 1)[1].strip() if ":" in str(err) else str(err)
        raise OverrideError(f"overrides {list(overrides)} give invalid params: {message}") from None
    check_backbone(params.backbone)


def check_backbone(name: str) -> None:
    """An unknown backbone fails here, not after the data stages ran."""
    try:
        from tlpipe.model.backbones import get_backbone
    except ImportError:  # the registry is part of the training stages; without them, nothing to check
        return
    try:
        get_backbone(name)
    except ValueError as err:
        raise OverrideError(str(err)) from None


def read_params(root: str | Path) -> dict:
    """params.yaml as plain data (empty when absent)."""
    path = Path(root) / DEFAULT_PARAMS_FILE
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _in(path: str) -> str:
    return "" if path == DEFAULT_PARAMS_FILE else f" (in {path})"


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__

"""Planning a comparison: one checked DVC experiment per backbone, and the `-S` arguments each gets.

Everything a user can get wrong (a malformed override, an unknown key or backbone, an invalid
value) fails here, before any experiment runs.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flows.overrides import OverrideError, apply_overrides, check_backbone, override_keys, read_params
from tlpipe.config.presets import leaves


@dataclass(frozen=True)
class Entry:
    backbone: str
    name: str  # the DVC experiment's name
    overrides: tuple[str, ...]  # every -S of this experiment, backbone first


def plan_entries(
    root: Path,
    backbones: Sequence[str],
    overrides: Sequence[str],
    backbone_overrides: dict[str, Sequence[str]],
    tag: str,
) -> list[Entry]:
    """One entry per backbone, each checked (syntax, schema, backbone registry) before anything runs."""
    if not backbones:
        raise ValueError("compare needs at least one backbone, got none")
    if isinstance(backbones, str):
        raise ValueError(f"backbones must be a list of names, got the string {backbones!r}")
    duplicates = sorted({b for b in backbones if list(backbones).count(b) > 1})
    if duplicates:
        raise ValueError(f"backbones repeat: {', '.join(duplicates)}")
    stray = sorted(set(backbone_overrides) - set(backbones))
    if stray:
        raise ValueError(f"backbone_overrides names backbones not in the comparison: {', '.join(stray)}")
    for b in backbones:
        check_backbone(b)
    entries = []
    for b in backbones:
        sets = (f"backbone={b}", *overrides, *backbone_overrides.get(b, ()))
        if any(key == "backbone" for keys in override_keys(sets[1:]).values() for key in keys):
            raise OverrideError(f"overrides {list(sets[1:])} set the backbone; list backbones instead")
        apply_overrides(root, sets, dry_run=True)
        entries.append(Entry(b, f"{b}-{tag}", sets))
    return entries


def escaping_path_overrides(root: Path, tracked_only: bool = True) -> list[str]:
    """Absolute-path overrides for the params dvc.yaml interpolates into dependencies (`${data.path}`)
    that hold paths leaving the project (`../x`).

    An experiment runs in a copy of the project (`dvc exp run --temp`, DVC's queue: under
    .dvc/tmp/exps/; a worker's scratch clone), where DVC resolves `../shared/...` from the copy
    and finds nothing. Made absolute, the path names the same files. Paths in params that DVC
    does not track, such as model.weights_dir, need no such fix: the stages resolve them from the
    project the copy came from (tlpipe.paths.Paths.resolve). A worker's scratch clone is no such
    copy: with `tracked_only` false, every such path in params is made absolute.
    """
    params = read_params(root)
    tracked = set(re.findall(r"\$\{\s*([\w.]+)\s*\}", (root / "dvc.yaml").read_text()))
    return [
        f"{key}={(root / value).resolve()}"
        for key, value in leaves(params)
        if isinstance(value, str) and value.startswith("../") and (key in tracked or not tracked_only)
    ]


def experiment_overrides(entry: Entry, extra: Sequence[str]) -> list[str]:
    """An experiment's overrides, then the path fixes for keys it does not set itself."""
    own = {key for keys in override_keys(entry.overrides).values() for key in keys}
    return [*entry.overrides, *(x for x in extra if x.split("=", 1)[0] not in own)]


def set_params(entry: Entry, extra: Sequence[str]) -> list[str]:
    """The `-S` arguments of `dvc exp run` for an experiment."""
    return [arg for o in experiment_overrides(entry, extra) for arg in ("-S", o)]


def require_commit(root: Path) -> None:
    done = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"{root}: `dvc exp run` needs a git repository with at least one commit")

"""Planning a comparison: one checked DVC experiment per backbone, and the `-S` arguments each gets.

Everything a user can get wrong (a malformed override, an unknown key or backbone, an invalid
value) fails here, before any experiment runs.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows import dvc_runner
from flows.overrides import OverrideError, apply_overrides, check_backbone, override_keys, read_params


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


def escaping_path_overrides(root: Path, pipe: dvc_runner.Pipeline, stages: Sequence[str]) -> list[str]:
    """Absolute-path overrides for params of `stages` that hold paths leaving the project (`../x`).

    An experiment runs in a temporary copy under .dvc/tmp/exps/, where `../shared/weights` no
    longer points where it does from the project root. The stages that rerun in the experiment
    get such paths made absolute (same files, so the same results); stages that do not rerun
    keep their params untouched, so DVC still finds them up to date.
    """
    params = read_params(root)
    declared = {
        key
        for s in stages
        for file, keys in pipe.params.get(s, ())
        if Path(file) == Path("params.yaml")
        for key in keys
    }
    found: list[str] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, str) and value.startswith("../"):
            found.append(f"{key}={(root / value).resolve()}")

    for key in sorted(declared):
        value: Any = params
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        walk(value, key)
    return found


def set_params(entry: Entry, extra: Sequence[str]) -> list[str]:
    """`-S` arguments of an experiment: its overrides, then the path fixes for keys it does not set."""
    own = {key for keys in override_keys(entry.overrides).values() for key in keys}
    args: list[str] = []
    for o in (*entry.overrides, *(x for x in extra if x.split("=", 1)[0] not in own)):
        args += ["-S", o]
    return args


def require_commit(root: Path) -> None:
    done = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=root, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"{root}: `dvc exp run` needs a git repository with at least one commit")

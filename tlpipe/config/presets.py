"""Named parameter presets (presets/<name>.yaml): loaded, checked against the schema (merged over
params.yaml), and turned into `dvc exp run -S key=value` overrides (stages.presets prints them).

params.yaml is the CPU preset; a preset file holds only what differs from it. Overrides, instead
of switched files, keep every run a DVC experiment over the same params.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tlpipe.config.params import Params, deep_merge, parse_params

PRESETS_DIR = Path(__file__).resolve().parents[2] / "presets"


def available(directory: Path = PRESETS_DIR) -> dict[str, str]:
    """Preset name → its first comment line."""
    out = {}
    for path in sorted(directory.glob("*.yaml")):
        first = next((line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        out[path.stem] = first
    return out


def load_preset(name: str, directory: Path = PRESETS_DIR) -> dict[str, Any]:
    path = directory / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(
            f"preset {name!r} not found in {directory}; expected one of: {', '.join(available(directory))}"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of params.yaml keys")
    return raw


def apply(preset: dict[str, Any], base: dict[str, Any]) -> Params:
    """The params a preset gives over `base` (a params.yaml mapping), validated."""
    return parse_params(deep_merge(base, preset), "preset")


def overrides(preset: dict[str, Any], base: dict[str, Any] | None = None) -> list[str]:
    """`key=value` strings in DVC's -S (Hydra) syntax, one per leaf of the preset that differs
    from `base` (params.yaml as read; None: every leaf)."""
    current = dict(leaves(base)) if base else {}
    return [
        f"{key}={hydra_value(value)}"
        for key, value in leaves(preset)
        if base is None or key not in current or current[key] != value
    ]


def leaves(d: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.extend(leaves(v, f"{prefix}{k}."))
        else:
            out.append((f"{prefix}{k}", v))
    return out


def hydra_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{}"
    return str(v)


# Machines to show a preset's runtime settings on: a label and each GPU's compute capability.
MACHINES: list[tuple[str, list[tuple[int, int]]]] = [
    ("no GPU", []),
    ("1 GPU, compute capability 7.x (V100, T4)", [(7, 0)]),
    ("1 GPU, compute capability >= 8.0 (A100, L4, H100)", [(8, 0)]),
    ("4 GPUs, compute capability 7.x", [(7, 0)] * 4),
    ("4 GPUs, compute capability >= 8.0", [(8, 0)] * 4),
]


def runtime_table(params: Params) -> list[str]:
    """What `tlpipe.runtime.configure` makes of params.runtime on each of MACHINES: the policy,
    XLA, and why a setting was changed (tlpipe.runtime.resolve, the code training runs)."""
    from tlpipe.runtime import resolve

    rt = params.runtime
    lines = []
    for label, gpus in MACHINES:
        # Without a strategy one GPU trains; mirrored (and one multi-worker task) uses them all.
        replicas = 1 if rt.strategy == "none" else max(1, len(gpus))
        resolved = resolve(
            mixed_precision=rt.mixed_precision,
            xla=rt.xla,
            strategy=rt.strategy,
            deterministic=rt.deterministic,
            gpus=gpus if rt.strategy != "none" else gpus[:1],
            replicas=replicas,
        )
        why = f" ({'; '.join(resolved.notes)})" if resolved.notes else ""
        lines.append(
            f"{label}: {replicas} replica(s), policy {resolved.policy}, xla {str(resolved.jit_compile).lower()}{why}"
        )
    return lines

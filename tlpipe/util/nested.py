"""Nested dicts (metrics, params) as flat (key path, value) pairs."""

from __future__ import annotations

from typing import Any


def flatten(obj: Any, sep: str = ".", prefix: str = "") -> list[tuple[str, Any]]:
    """Scalars (numbers, strings, booleans, None) of a nested dict as ("a.b.c", value); lists are left out."""
    if isinstance(obj, dict):
        return [item for k, v in obj.items() for item in flatten(v, sep, f"{prefix}{k}{sep}")]
    if isinstance(obj, (int, float, str, bool)) or obj is None:
        return [(prefix[: -len(sep)], obj)]
    return []

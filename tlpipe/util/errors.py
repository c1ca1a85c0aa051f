"""The errors bad input raises, and the one-line form of any error for messages.

A stage turns these into one line on stderr and exit code 1 (stages.cli); everything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class DataError(ValueError):
    """Input data is missing, malformed or inconsistent."""


class ModelError(ValueError):
    """A model file is missing, corrupt, or does not fit the data."""


def first_line(err: BaseException, limit: int = 300) -> str:
    """The first line of an error's message (its type name when the message is empty)."""
    lines = str(err).strip().splitlines()
    return lines[0][:limit] if lines else type(err).__name__

"""The thin command line every stage shares: `python -m stages.<name>`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from stages.params import Params, load_params
from stages.paths import Paths


def run_stage(run: Callable[[Params, Paths], Any]) -> None:
    """Run a stage on params.yaml and the default paths.

    Bad input (params, data, models) raises ValueError subclasses with messages that name the
    file, key or value: print that one line and exit 1 instead of a traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        run(load_params(), Paths())
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)

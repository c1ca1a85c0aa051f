"""The thin command line every stage shares: `python -m stages.<name>`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from stages.params import Params, load_params
from stages.paths import Paths
from stages.tracing import Tracked, trace_dir, write_reads


def run_stage(run: Callable[[Params, Paths], Any]) -> None:
    """Run a stage on params.yaml and the default paths.

    Bad input (params, data, models) raises ValueError subclasses with messages that name the
    file, key or value: print that one line and exit 1 instead of a traceback.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    module = run.__module__
    if module == "__main__":  # `python -m stages.<name>`
        module = sys.modules["__main__"].__spec__.name
    stage = module.rsplit(".", 1)[-1]
    reads: set[str] = set()
    try:
        params = load_params()
        traced = trace_dir()
        run(Tracked(params, reads) if traced else params, Paths())  # type: ignore[arg-type]
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    finally:
        if trace_dir():
            write_reads(trace_dir(), stage, reads)

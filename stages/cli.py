"""Not a stage: the thin command line every entry point of stages/ shares (`python -m stages.<name>`).

Bad input (params, data, models) raises ValueError subclasses with messages that name the file, key
or value: the entry points print that one line and exit 1 instead of a traceback. So does a
multi-worker cluster that lost a worker (ConnectionError naming it, tlpipe.training.step).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tlpipe.config.base import Section
from tlpipe.config.load import DEFAULT_PARAMS, load_sections
from tlpipe.config.tracing import Tracked, trace_dir, write_reads
from tlpipe.paths import Paths
from tlpipe.util.quiet import quiet_entry_point

if TYPE_CHECKING:
    from tlpipe.config.params import Params


def start_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@contextmanager
def exit_on_bad_input() -> Iterator[None]:
    """Bad input (ValueError, FileNotFoundError) or a lost cluster worker (ConnectionError):
    `error: <message>` on stderr and exit 1."""
    try:
        yield
    except (ValueError, FileNotFoundError, ConnectionError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def run_stage(run: Callable[[Params, Paths], Any], *sections: type[Section]) -> None:
    """Run a stage on params.yaml, `sections` and the top-level keys validated (the sections the
    stage reads: its only params code), and the default paths, with exit_on_bad_input's errors."""
    quiet_entry_point()
    start_logging()
    module = run.__module__
    if module == "__main__":  # `python -m stages.<name>`
        module = sys.modules["__main__"].__spec__.name
    stage = module.rsplit(".", 1)[-1]
    reads: set[str] = set()
    try:
        with exit_on_bad_input():
            params = load_sections(DEFAULT_PARAMS, *sections)
            traced = trace_dir()
            run(Tracked(params, reads) if traced else params, Paths())  # type: ignore[arg-type]
    finally:
        if trace_dir():
            write_reads(trace_dir(), stage, reads)

"""TensorFlow's start-up chatter kept out of the stages' logs.

On a machine without an NVIDIA GPU, importing TensorFlow prints "Could not find cuda drivers"
and "failed call to cuInit: ... UNKNOWN ERROR (303)" (at ERROR level), plus the oneDNN notice.
They come from C++ before TensorFlow reads TF_CPP_MIN_LOG_LEVEL, straight to file descriptor 2,
so no Python logging setting reaches them, and they read as failures in DVC's and Prefect's
logs when they only mean "no GPU". `filter_native_stderr` puts a filter on descriptor 2 that
drops exactly these lines and passes everything else through as it comes. Whether a GPU was
expected is said once, in the stage's own words (tlpipe.runtime).
"""

from __future__ import annotations

import atexit
import faulthandler
import os
import re
import sys
import threading

# Lines TensorFlow prints at start-up that say nothing a user must act on (on CPU machines, or
# before anything is configured). Anything not matching is shown.
NOISE = re.compile(
    r"oneDNN custom operations are on"
    r"|Could not find cuda drivers on your machine"
    r"|failed call to cuInit"
    r"|All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|Unable to register cu(DNN|FFT|BLAS) factory"
    r"|computation placer already registered"
    r"|This TensorFlow binary is optimized to use available CPU instructions"
    r"|To enable the following instructions: .* in other operations, rebuild TensorFlow"
)

_installed = False


def quiet_entry_point() -> None:
    """What every `python -m stages.<name>` does first, before anything imports TensorFlow: TensorFlow's
    C++ log level, and (only when this process is such an entry point) the filter on descriptor 2.
    Called, never run on import: importing the library changes nothing."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = getattr(sys, "orig_argv", [])
    if argv[1:2] == ["-m"] and len(argv) > 2 and argv[2].startswith("stages."):
        filter_native_stderr()


def filter_native_stderr() -> None:
    """Filter descriptor 2 of this process (and of children it starts) for the rest of its life."""
    global _installed
    if _installed or os.environ.get("TLPIPE_RAW_STDERR") or not hasattr(os, "pipe"):
        return
    _installed = True
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    # A crash report must not wait in the pipe: it goes straight to the real stderr.
    faulthandler.enable(file=os.fdopen(os.dup(original), "w"), all_threads=True)
    thread = threading.Thread(target=_forward, args=(read_end, original), name="stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)  # the pipe's last write end in this process closes: the reader sees EOF
        thread.join(timeout=5)

    atexit.register(restore)


def _forward(read_end: int, original: int) -> None:
    with os.fdopen(read_end, "rb") as pipe:
        for line in pipe:
            if not NOISE.search(line.decode("utf-8", "replace")):
                os.write(original, line)

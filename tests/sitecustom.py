"""Test-only code that runs inside the processes DVC starts (stage commands, queue workers): a
`sitecustomize.py` in a directory of the tests' own, put on PYTHONPATH. Python imports it at the
start of every interpreter that inherits the environment, so a test can build a situation (a
kill at an exact point, two stages that must meet) without a hook in the project's code."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

# Shared by every snippet: run code right after a module of the stage is imported.
_AFTER_IMPORT = '''
import importlib.abc
import importlib.util
import sys


def after_import(name, then):
    """Call then(module) right after `name` is imported (before anything uses it)."""

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(fullname)
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                then(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Finder())


def running(module):
    """Whether this interpreter runs `python -m <module>`."""
    argv = list(sys.orig_argv)
    return "-m" in argv and argv[argv.index("-m") + 1 :][:1] == [module]
'''


def sitecustomize_env(directory: Path, code: str) -> dict[str, str]:
    """Write `code` (with after_import() and running() defined) as sitecustomize.py in `directory`;
    the environment variables that make the processes of a command run it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_AFTER_IMPORT + "\n" + textwrap.dedent(code))
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(directory), os.environ.get("PYTHONPATH")) if p)}

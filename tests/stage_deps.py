"""What each DVC stage really depends on, derived from the code: the project modules its module
imports (directly or through others, lazily imported ones included, with the packages they live in)
and, from a traced run, the params keys it reads. tests/test_dvc_yaml.py compares both with dvc.yaml.

    python -m tests.stage_deps            # print each stage's module deps, as dvc.yaml lists them
    python -m tests.stage_deps --write    # rewrite those lists in dvc.yaml (comments, data deps kept)
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "stages"  # the entry points
PACKAGES = (PACKAGE, "tlpipe")  # and the library beneath them


def module_file(module: str) -> Path:
    parts = module.split(".")
    path = REPO.joinpath(*parts)
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def direct_imports(module: str) -> set[str]:
    """Project modules `module` imports anywhere in its body (function-level imports included), but
    not those only type checkers import (`if TYPE_CHECKING:`): they never run."""
    tree = ast.parse(module_file(module).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            node.body = []
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] in PACKAGES)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in PACKAGES:
                found.add(node.module)
                # from stages import x, from tlpipe.data import folders: x may be a module
                found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if module_file(m).is_file()}


def imported_modules(module: str) -> set[str]:
    """`module`, the packages it lives in, and every project module it imports, transitively (with
    the packages those live in: importing a module runs its packages' __init__.py)."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(direct_imports(m))
    return seen


def code_deps(stage: str) -> list[str]:
    """The files dvc.yaml should list as the code `python -m stages.<stage>` runs."""
    return sorted(str(module_file(m).relative_to(REPO)) for m in imported_modules(f"{PACKAGE}.{stage}"))


def traced_reads(trace_dir: Path, stage: str) -> set[str]:
    """The params keys a stage read in a run with TLPIPE_TRACE_READS=<trace_dir> (tlpipe.config.tracing)."""
    return set(json.loads((trace_dir / f"{stage}.json").read_text()))


CODE_PREFIXES = tuple(f"- {p}/" for p in PACKAGES)


def rewrite_code_deps(text: str) -> str:
    """dvc.yaml's text with each stage's `- stages/….py` and `- tlpipe/….py` deps replaced by the derived list."""
    out: list[str] = []
    stage = None
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith("  ") and not line.startswith("   ") and stripped.endswith(":"):
            stage = stripped[:-1]
        if stripped.startswith(CODE_PREFIXES) and stripped.endswith(".py") and stage:
            indent = line[: len(line) - len(line.lstrip())]
            if not out or not out[-1].strip().startswith(CODE_PREFIXES):
                out += [f"{indent}- {f}" for f in code_deps(stage)]
            continue
        out.append(line)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    import sys

    import yaml

    dvc_yaml = REPO / "dvc.yaml"
    if "--write" in sys.argv[1:]:
        dvc_yaml.write_text(rewrite_code_deps(dvc_yaml.read_text()))
    for stage in yaml.safe_load(dvc_yaml.read_text())["stages"]:
        print(f"{stage}:")
        for f in code_deps(stage):
            print(f"  - {f}")

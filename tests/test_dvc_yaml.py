"""dvc.yaml says exactly what each stage reads: the code it runs and the params keys it reads,
derived from the code (tests/stage_deps.py) and from a traced run; and the committed dvc.lock was
written by that code."""

from __future__ import annotations

import pytest
import yaml

from flows.dvc_runner import read_pipeline
from tests.conftest import REPO
from tests.stage_deps import code_deps, direct_imports, imported_modules, traced_reads
from tlpipe.config.load import SECTIONS
from tlpipe.config.params import RESULT_NEUTRAL_KEYS
from tlpipe.util.hashing import md5_file

STAGES = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


def declared_deps(stage: str) -> list[str]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["deps"]


@pytest.mark.parametrize("stage", STAGES)
def test_dvc_yaml_lists_every_module_a_stage_runs_and_no_other(stage: str) -> None:
    listed = sorted(d for d in declared_deps(stage) if d.endswith(".py"))
    derived = code_deps(stage)
    assert listed == derived, (
        f"dvc.yaml stage {stage!r}: missing {sorted(set(derived) - set(listed))}, "
        f"not imported {sorted(set(listed) - set(derived))} (python -m tests.stage_deps prints the list)"
    )


def test_each_stage_runs_the_code_of_the_params_sections_it_reads_and_no_other() -> None:
    """Params are read per section: a stage imports the module of each section its dvc.yaml params
    name (tlpipe/config/<section>.py) and no other, so an edit to a section it does not read
    (`predict`, read by no stage) reruns nothing."""
    pipe = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for stage in STAGES:
        keys = [k for entry in pipe[stage].get("params", []) for k in ([entry] if isinstance(entry, str) else [])]
        read = {key.split(".")[0] for key in keys} & set(SECTIONS)
        imported = {s for s in SECTIONS if f"tlpipe/config/{s}.py" in code_deps(stage)}
        assert imported == read, f"{stage}: runs the code of sections {sorted(imported)}, reads {sorted(read)}"
    assert not any("tlpipe/config/predict.py" in code_deps(stage) for stage in STAGES)


def test_no_stage_module_imports_another() -> None:
    for stage in STAGES:
        others = {f"stages.{s}" for s in STAGES if s != stage}
        reached = imported_modules(f"stages.{stage}")
        assert not reached & others, f"stages.{stage} imports stage module(s) {sorted(reached & others)}"
        assert direct_imports(f"stages.{stage}") <= reached


def test_no_import_circles() -> None:
    """The import graph of stages/ and tlpipe/ (what runs, lazy imports included) has no cycle."""
    modules = sorted(m for stage in STAGES for m in imported_modules(f"stages.{stage}"))
    modules += [str(p.relative_to(REPO).with_suffix("")).replace("/", ".") for p in (REPO / "tlpipe").rglob("*.py")]
    graph = {m: direct_imports(m) for m in set(modules) if not m.endswith("__init__")}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph.get(module, ())):
            assert dep not in path, f"import circle: {' -> '.join([*path[path.index(dep) :], dep])}"
            if dep not in done:
                visit(dep, [*path, dep])
        done.add(module)

    for module in sorted(graph):
        visit(module, [module])


def test_dvc_yaml_lists_the_params_each_stage_reads_and_no_other(reproduced) -> None:
    pipe = read_pipeline(REPO)
    for stage in STAGES:
        declared = {key for file, keys in pipe.params[stage] if file == "params.yaml" for key in keys}
        reads = traced_reads(reproduced["reads"], stage) - RESULT_NEUTRAL_KEYS
        assert declared == reads, (
            f"dvc.yaml stage {stage!r}: reads but does not list {sorted(reads - declared)}; "
            f"lists but never read {sorted(declared - reads)}"
        )


def test_the_committed_dvc_lock_was_written_by_this_code() -> None:
    """dvc.lock holds the hash of every code dependency and the value of every param it was run
    with: they must be this checkout's, else the lock (and the metrics the README quotes) came from
    other code. Regenerate it with `dvc repro`, never `dvc commit`."""
    lock = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(lock) == set(STAGES)
    for stage, entry in lock.items():
        code = {d["path"]: d["md5"] for d in entry["deps"] if d["path"].endswith(".py")}
        assert sorted(code) == code_deps(stage), f"{stage}: dvc.lock lists other code than dvc.yaml"
        stale = [path for path, digest in code.items() if md5_file(REPO / path) != digest]
        assert not stale, f"{stage}: dvc.lock was written by other versions of {stale}; rerun `dvc repro`"
        for key, value in (entry.get("params") or {}).get("params.yaml", {}).items():
            now = _get(params, key)
            assert now == value, f"{stage}: dvc.lock ran with {key}={value!r}, params.yaml has {now!r}"


def _get(tree: dict, key: str) -> object:
    for part in key.split("."):
        tree = tree[part]
    return tree

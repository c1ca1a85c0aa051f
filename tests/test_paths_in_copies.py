"""Relative params paths (`../shared/weights`) name the same files in the workspace and in the copies
DVC makes for experiments: `dvc exp run --temp` runs in <project>/.dvc/tmp/exps/standalone/<tmp>/,
the queue in <project>/.dvc/tmp/exps/<tmp>/. Tried for real with DVC for --temp."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.tiny_project import commit, run
from tlpipe.paths import Paths

# What the stage runs: where it is, and where `../weights` from params leads from there.
RESOLVE = (
    "import json, os, sys; sys.path.insert(0, {repo!r}); from tlpipe.paths import Paths; "
    "json.dump({{'cwd': os.getcwd(), 'weights': str(Paths().resolve('../weights'))}}, open({out!r}, 'w'))"
)


def test_dvc_exp_run_temp_resolves_relative_params_from_the_project(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    out = tmp_path / "seen.json"
    cmd = f"{shlex.quote(sys.executable)} -c {shlex.quote(RESOLVE.format(repo=str(REPO), out=str(out)))}"
    (root / "params.yaml").write_text("x: 1\n")
    (root / "dvc.yaml").write_text(f"stages:\n  where:\n    cmd: {json.dumps(cmd)}\n    params: [x]\n")
    run(root, "git", "init", "-q", "-b", "main")
    run(root, "dvc", "init", "-q")
    commit(root, "init")
    run(root, "dvc", "exp", "run", "--temp", "-S", "x=2")
    seen = json.loads(out.read_text())
    assert "/.dvc/tmp/exps/" in seen["cwd"], seen  # it really ran in DVC's copy
    assert Path(seen["weights"]) == tmp_path / "weights" == Paths(root).resolve("../weights")


def test_copies_of_the_queue_and_of_temp_runs_resolve_from_the_project(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    for copy in (root / ".dvc/tmp/exps/tmpabc123", root / ".dvc/tmp/exps/standalone/tmpabc123"):
        assert Paths(copy).resolve("../weights") == tmp_path / "weights"
    assert Paths(tmp_path / "elsewhere").resolve("../weights") == tmp_path / "weights"

"""data.sha256 pins the file at data.sha256_path, not whatever data.path names: the README's
own-images commands, applied to params.yaml by DVC's own -S writer, ingest another folder; a wrong
file at the pinned path is still refused with one line before anything in it is parsed."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from dvc.utils.hydra import apply_overrides

from tests.conftest import REPO
from tests.inputs import bad_image, make_class_tree, save_image, tar_tree
from tlpipe.config.params import deep_merge, load_params, parse_params
from tlpipe.config.presets import load_preset, overrides
from tlpipe.data.raw import pinned_sha256
from tlpipe.util.hashing import sha256_file

PHOTOS = "/path/to/photos"


def readme_own_image_commands() -> list[list[str]]:
    """The README's `dvc exp run` commands for one's own photos, as word lists (the preset's
    `$(python -m stages.presets NAME)` expanded the way the shell would)."""
    text = (REPO / "README.md").read_text()
    commands = []
    for line in re.findall(r"dvc exp run [^`\n]*", text):
        if f"data.path={PHOTOS}" not in line:
            continue
        line = re.sub(r"\$\(python -m stages\.presets ([\w ]+)\)", lambda m: preset_words(m.group(1).split()), line)
        commands.append(shlex.split(line))
    return commands


def preset_words(names: list[str]) -> str:
    """What `$(python -m stages.presets NAME...)` prints: the presets merged, later names winning."""
    merged: dict = {}
    for name in names:
        merged = deep_merge(merged, load_preset(name))
    return " ".join(f"-S {kv}" for kv in overrides(merged, repo_params()))


def repo_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def run_ingest(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stages.ingest"],
        cwd=project,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )


def photo_archive(tmp_path: Path) -> Path:
    """Two classes of photos in mixed sizes and aspect ratios, as `<class>/<photo>.jpg`."""
    tree = make_class_tree(tmp_path / "photos", ["daisy", "tulips"], {"train": 10}, fmt="jpg")
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(40, 90), (120, 50), (33, 33)]):
        photo = rng.integers(0, 255, (h, w, 3), np.uint8)
        save_image(tree / "train" / ("daisy", "tulips")[i % 2] / f"odd{i}.jpg", photo)
    return tar_tree(tree / "train", tmp_path / "photos.tar.gz")


def test_the_readme_commands_for_own_photos_ingest_with_params_yaml_as_committed(tmp_path: Path) -> None:
    commands = readme_own_image_commands()
    assert len(commands) >= 2, "the README's own-photos commands (data.path=/path/to/photos) are gone"
    archive = photo_archive(tmp_path)
    for n, words in enumerate(commands):
        assert words[:3] == ["dvc", "exp", "run"]
        sets = [words[i + 1].replace(PHOTOS, str(archive)) for i, w in enumerate(words) if w == "-S"]
        project = tmp_path / f"project{n}"
        project.mkdir()
        shutil.copy(REPO / "params.yaml", project / "params.yaml")
        apply_overrides(str(project / "params.yaml"), sets)  # DVC's writer, as `dvc exp run -S` applies them
        params = load_params(project / "params.yaml")
        assert params.data.sha256 and params.data.sha256_path != params.data.path  # the CIFAR pin stays, inert
        assert pinned_sha256(params.data) is None
        done = run_ingest(project)
        assert done.returncode == 0, f"{' '.join(words)}:\n{done.stderr}"
        assert (project / "data" / "prepared").is_dir()


def test_a_wrong_file_at_the_pinned_path_is_refused_with_one_line(tmp_path: Path) -> None:
    project = tmp_path / "project"
    tree = make_class_tree(tmp_path / "src", ["cat", "dog"], {"train": 4})
    good = tar_tree(tree, tmp_path / "good.tar.gz")
    # Another archive at the pinned path, holding an image no decoder accepts: reaching it would
    # fail with another error than the checksum's.
    (tree / "train" / "cat" / "0_bomb.png").write_bytes(bad_image("huge"))
    (project / "data").mkdir(parents=True)
    wrong = tar_tree(tree, project / "data" / "images.tar.gz")
    params = repo_params()
    # The pin names the path spelled another way: still the same path.
    pin = {"sha256": sha256_file(good), "sha256_path": "./data/../data/images.tar.gz"}
    params["data"].update(path="data/images.tar.gz", **pin)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    done = run_ingest(project)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].endswith(
        f"{wrong}: SHA-256 checksum mismatch: expected {sha256_file(good)}, got {sha256_file(wrong)}. "
        "The file is corrupt, truncated or not the one params name (data.sha256)."
    )
    assert not (project / "data" / "prepared").exists() and not (project / "reports").exists()


@pytest.mark.parametrize(
    ("path", "pinned_path", "pins"),
    [
        ("../shared/x.tar.gz", "../shared/x.tar.gz", True),
        ("./../shared/a/../x.tar.gz", "../shared/x.tar.gz", True),  # spelled differently, the same path
        ("/data/photos", "../shared/x.tar.gz", False),  # another path: no stale pin
        ("/data/photos", None, True),  # no path given: the pin is data.path's, whatever it is
        ("{root}/../shared/x.tar.gz", "../shared/x.tar.gz", True),  # made absolute (flows.compare): still it
        ("{root}/.dvc/tmp/exps/tmp1/../shared/x.tar.gz", "../shared/x.tar.gz", False),
        ("https://example.org/c.tar.gz", "https://example.org/c.tar.gz", True),
        ("https://example.org/c.tar.gz", "https://example.org/d.tar.gz", False),
    ],
)
def test_the_pin_holds_for_its_own_path_only(
    path: str, pinned_path: str | None, pins: bool, tmp_path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the project root the stages resolve relative paths from
    digest = "ab" * 32
    path = path.format(root=tmp_path)
    source = "keras" if path.startswith("https") else "folder"
    data = parse_params({"data": {"source": source, "path": path, "sha256": digest, "sha256_path": pinned_path}}).data
    assert pinned_sha256(data) == (digest if pins else None)
    assert pinned_sha256(parse_params({"data": {"source": source, "path": path}}).data) is None


def test_a_relative_pin_holds_in_an_experiments_copy_of_the_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`dvc exp run --temp` and DVC's queue run stages in <project>/.dvc/tmp/exps/<tmp>/, where
    `../shared/...` is still the project's (tlpipe.paths.Paths.resolve), made absolute or not."""
    copy = tmp_path / "project" / ".dvc" / "tmp" / "exps" / "tmp1"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    digest = "cd" * 32
    for path in ("../shared/x.tar.gz", str(tmp_path / "shared" / "x.tar.gz")):
        data = {"source": "folder", "path": path, "sha256": digest, "sha256_path": "../shared/x.tar.gz"}
        assert pinned_sha256(parse_params({"data": data}).data) == digest

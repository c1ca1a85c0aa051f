"""Did this machine reproduce a commit? Run after `dvc repro`, in the project root:

    python -m stages.check_reproduction            # against HEAD
    python -m stages.check_reproduction --rev v1.0

It checks what holds across CPUs (README: Reproduction is byte for byte on the same kind of CPU):

- the data stages (ingest, validate) gave the same bytes: every output that the workspace's
  dvc.lock records for them (timings.json aside) has the hash the rev's dvc.lock has, and
  `dvc status` finds their outputs as that lock says;
- every metric is within TOLERANCES of the rev's, as `dvc metrics diff <rev>` reads them; whatever
  has no tolerance (counts, epochs, names, sizes) must be equal. The test metrics are in git
  (dvc.yaml: `cache: false`) and always compared; the other stages' metrics are compared where
  the rev's are in the DVC cache (after `dvc pull`), and named as skipped otherwise.

Prints one line per output or metric that does not hold and exits 1; exits 0 when all hold.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

DATA_STAGES = ("ingest", "validate")
VOLATILE = re.compile(r"(^|/)timings\.json$")  # wall times: differ on every run, on any machine
# Never compared: the benchmark's throughput and the timings files' wall times differ on every run.
VOLATILE_METRICS = re.compile(rf"^reports/benchmark/|{VOLATILE.pattern}")

# Absolute tolerances by metric name (dotted path in its file; the first pattern that matches).
# Measured across CPUs: a fresh clone's `dvc repro` on an Intel Xeon (AVX-512, AMX) gave test top-1
# 91.30% against 91.38% on the AMD EPYC that wrote the committed dvc.lock, 0.0008 apart: accuracies
# get about six times that, half a point. Loss and ECE were not compared there; theirs are set wide
# of the same order. Metrics DVC cannot diff (lists, nulls) are not compared.
TOLERANCES: tuple[tuple[str, float], ...] = (
    (r"accuracy_drop_points$", 0.5),  # export: a variant's drop in percentage points, the same half point
    (r"(accuracy|agreement|macro_precision|macro_recall|macro_f1)$", 0.005),  # fractions of the images
    (r"loss$", 0.02),  # cross-entropy, nats
    (r"ece$", 0.01),  # expected calibration error
    (r"^parity\.max_abs_diff$", 0.001),  # Keras vs ONNX on one machine: export fails past 1e-3 anyway
    (r"max_abs_diff$", 0.02),  # a variant's largest probability difference from float32, on one image
    (r"learning_rate$", 1e-9),  # the last epoch's, from a float32 schedule: rounding only
)


def tolerance(metric: str) -> float:
    """The absolute tolerance of a metric; 0.0: it must be equal."""
    return next((tol for pattern, tol in TOLERANCES if re.search(pattern, metric)), 0.0)


def within(old: Any, new: Any, tol: float) -> bool:
    if old == new:
        return True
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (old, new))
    if not numbers:
        return False
    if math.isnan(old) or math.isnan(new):
        return math.isnan(old) and math.isnan(new)
    return abs(new - old) <= tol + 1e-12


def lock_outs(text: str, stage: str) -> dict[str, dict[str, Any]]:
    """What a dvc.lock's text records for a stage's outputs: path → hash fields."""
    entry = (yaml.safe_load(text) or {}).get("stages", {}).get(stage) or {}
    return {o["path"]: {k: v for k, v in o.items() if k != "path"} for o in entry.get("outs", [])}


def check_data(root: Path, rev: str, rev_lock: str) -> list[str]:
    """The data stages' outputs: the same hashes in both locks, and in the workspace as its lock says."""
    from dvc.repo import Repo

    lock_file = root / "dvc.lock"
    if not lock_file.is_file():
        return [f"dvc.lock: not in {root}: run `dvc repro` first"]
    here = lock_file.read_text()
    problems = []
    for stage in DATA_STAGES:
        old, new = lock_outs(rev_lock, stage), lock_outs(here, stage)
        if not old or not new:
            where = rev if not old else "the workspace"
            problems.append(f"dvc.lock: no outputs of stage {stage!r} at {where}")
            continue
        for path in sorted(set(old) | set(new)):
            if VOLATILE.search(path) or old.get(path) == new.get(path):
                continue
            was, now = (old.get(path) or {}).get("md5"), (new.get(path) or {}).get("md5")
            problems.append(f"dvc.lock: {stage}'s {path}: md5 {was} at {rev}, {now} here (must be the same bytes)")
    with Repo(str(root)) as repo:
        for stage, changes in repo.status(targets=list(DATA_STAGES)).items():
            problems.append(f"dvc status: {stage} is not as the workspace's dvc.lock says: {changes}")
    return problems


def check_metrics(root: Path, rev: str) -> tuple[list[str], int, list[str]]:
    """Each metric against the rev's: (problems, how many metrics were compared, the cached
    metrics files skipped because the rev's copy is not in the local DVC cache)."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        outs = [o for o in repo.index.outs if o.metric and not VOLATILE_METRICS.search(o.def_path)]
        in_git = {o.def_path for o in outs if not o.use_cache}
        if not in_git:
            return ["dvc.yaml: no git-tracked metrics file (a metrics output with `cache: false`)"], 0, []
        files = sorted(o.def_path for o in outs)
        result = repo.metrics.diff(a_rev=rev, b_rev="workspace", targets=files, all=True)
    problems, skipped = [], []
    for where, errors in (result.get("errors") or {}).items():
        for path, error in errors.items() if isinstance(errors, dict) else [("", errors)]:
            if where == rev and path and path not in in_git:
                skipped.append(path)  # cached at the rev and not pulled here: nothing to compare with
                continue
            at = rev if where == rev else "the workspace"
            problems.append(f"{path or 'metrics'}: cannot be read at {at}: {error}")
    compared = 0
    for path, metrics in sorted((result.get("diff") or {}).items()):
        if path in skipped:
            continue
        for metric, values in sorted(metrics.items()):
            compared += 1
            old, new, tol = values.get("old"), values.get("new"), tolerance(metric)
            if within(old, new, tol):
                continue
            if old is None or new is None:
                problems.append(f"{path}: {metric} is {new!r} here, {old!r} at {rev} (missing on one side)")
                continue
            delta = f"{new - old:+.4g}, " if "diff" in values else ""
            bound = f"tolerance ±{tol:g}" if tol else "must be equal"
            problems.append(f"{path}: {metric} is {new!r} here, {old!r} at {rev} ({delta}{bound})")
    return problems, compared, sorted(set(skipped))


def check(root: Path, rev: str) -> tuple[list[str], int, list[str]]:
    """Every way the workspace fails to reproduce `rev`, one line each (none when it does), how
    many metrics were compared, and the metrics files skipped (the rev's not in the DVC cache)."""
    shown = subprocess.run(["git", "show", f"{rev}:./dvc.lock"], cwd=root, capture_output=True, text=True)
    if shown.returncode != 0:
        raise ValueError(f"dvc.lock at {rev}: {shown.stderr.strip() or 'not found'}")
    metrics, compared, skipped = check_metrics(root, rev)
    return check_data(root, rev, shown.stdout) + metrics, compared, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.check_reproduction", description=__doc__.split("\n")[0])
    parser.add_argument("--rev", default="HEAD", help="the commit to compare with (default: HEAD)")
    args = parser.parse_args(argv)
    try:
        problems, compared, skipped = check(Path.cwd(), args.rev)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in skipped:
        print(f"{path}: skipped: {args.rev}'s copy is not in the DVC cache (`dvc pull` it to compare)")
    for line in problems:
        print(line)
    if problems:
        print(f"not reproduced: {len(problems)} difference(s) from {args.rev} beyond what holds across CPUs")
        return 1
    print(f"reproduced: {' and '.join(DATA_STAGES)} byte for byte, {compared} metrics within tolerance of {args.rev}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Prefect flows over the DVC pipeline: DVC owns the DAG, the cache and dvc.lock; Prefect owns
scheduling, retries, logs and the run history.

- flows.pipeline: the DVC stages as Prefect tasks (`python -m flows.pipeline`).
- flows.compare: one `dvc exp run -S backbone=...` per backbone and a leaderboard (`python -m flows.compare`).
- flows.dvc_runner: the thin subprocess wrapper that streams DVC's output into the Prefect logs.
- flows.overrides: `-S key=value` overrides, checked against the params schema before use.
"""

import os

# Before Prefect is imported (`python -m flows.pipeline` imports this package first): Prefect's
# temporary server took 5-20 s to start here (database migrations on first use, a busy machine),
# and its default 20 s limit turned a slow start into a failed run. A user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")

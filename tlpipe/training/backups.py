"""Resumable state of a training loop, in a checkpoint directory outside DVC's outputs.

Why not keras.callbacks.BackupAndRestore: in Keras 3.15 it records the batch reached but, on
restore, restarts the interrupted epoch from its first batch, and it does not restore
EarlyStopping's or ModelCheckpoint's state. A backup here holds the weights and optimizer
variables, the dropout RNG state, the position (epoch, step), the best value so far, the
patience counter, the history, and the running sums of the epoch's train metrics; the loop
(tlpipe.training.loop) continues exactly where it was taken.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__spec__.name)

BACKUP_STATE = "backup.json"
BEST_WEIGHTS = "best.weights.h5"


@dataclass
class LoopState:
    epoch: int = 0  # the epoch in progress
    step: int = 0  # steps of that epoch already trained
    history: list[dict[str, float]] = field(default_factory=list)
    best: float | None = None
    best_epoch: int | None = None
    wait: int = 0
    stopped_early: bool = False
    backup_file: str | None = None  # weights of this state, in the checkpoint directory
    key: str = ""  # what run the state belongs to (params hash): a stale backup is ignored
    # The running sums behind the epoch's train loss/accuracy after `step` steps: without them a
    # resumed epoch would report the mean over the steps after the resume only.
    epoch_metrics: list[list[float]] = field(default_factory=list)


class Backups:
    """Resumable state in a checkpoint directory (outside the DVC outs, so it survives a kill).

    `enabled=False` (a non-chief worker of a multi-worker cluster) saves nothing anywhere.
    """

    def __init__(self, directory: Path, key: str, enabled: bool = True) -> None:
        self.dir = Path(directory)
        self.key = key
        self.enabled = enabled

    def load(self, model: Any) -> LoopState | None:
        path = self.dir / BACKUP_STATE
        if not self.enabled or not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text())
            state = LoopState(**{k: v for k, v in raw.items() if k != "rng"})
        except (ValueError, TypeError) as err:
            log.warning("ignoring unreadable backup %s (%s)", path, err)
            return None
        if state.key != self.key:
            log.warning("discarding backup %s: it belongs to other params (key %s, now %s)", path, state.key, self.key)
            self.clear()
            return None
        weights = self.dir / (state.backup_file or "")
        if not weights.is_file():
            log.warning("ignoring backup %s: weights file %s missing", path, weights)
            return None
        # The optimizer's variables must be created under the strategy the model was built in:
        # under MirroredStrategy, outside its scope, building raises "Need to be inside
        # `with strategy.scope()`" (and the training step would otherwise build them in it later).
        with _strategy_scope(model):
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
        # Outside the scope: load_weights creates a throwaway optimizer's variables (iteration,
        # learning_rate), and under MultiWorkerMirroredStrategy creating a variable in its scope
        # is a collective broadcast the other workers (which hold no backup) would never join.
        model.load_weights(weights)  # weights and optimizer variables
        _set_rng_state(model, raw.get("rng", []))
        return state

    def save(self, model: Any, state: LoopState) -> None:
        """Weights under a new name, then the state naming them, then the old file goes: a kill
        at any point leaves a state whose weights exist."""
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        old = state.backup_file
        name = f"backup-{state.epoch:04d}-{state.step:07d}.weights.h5"
        tmp = self.dir / f".tmp-{os.getpid()}.weights.h5"
        model.save_weights(tmp)
        os.replace(tmp, self.dir / name)
        state.backup_file = name
        state.key = self.key
        if not state.step:  # the loop sets the running totals of a part-trained epoch
            state.epoch_metrics = []
        payload = {**asdict(state), "rng": _rng_state(model)}
        tmp_json = self.dir / f".tmp-{os.getpid()}.json"
        tmp_json.write_text(json.dumps(payload))
        os.replace(tmp_json, self.dir / BACKUP_STATE)
        if old and old != name:
            (self.dir / old).unlink(missing_ok=True)

    def save_best(self, model: Any) -> None:
        if not self.enabled:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".tmp-best-{os.getpid()}.weights.h5"
        model.save_weights(tmp)
        os.replace(tmp, self.dir / BEST_WEIGHTS)

    def load_best(self, model: Any) -> None:
        model.load_weights(self.dir / BEST_WEIGHTS)

    def clear(self) -> None:
        if self.enabled:
            shutil.rmtree(self.dir, ignore_errors=True)


def _strategy_scope(model: Any) -> Any:
    """The scope of the tf.distribute strategy `model` was built under (Keras's TensorFlow
    trainer records it; the default strategy's scope otherwise)."""
    import tensorflow as tf

    strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
    return strategy.scope()


def _rng_state(model: Any) -> list[list[int]]:
    # Dropout's SeedGenerator state is a model variable that save_weights leaves out.
    return [np.asarray(v.numpy()).tolist() for v in model.variables if "seed_generator_state" in v.path]


def _set_rng_state(model: Any, values: list[list[int]]) -> None:
    variables = [v for v in model.variables if "seed_generator_state" in v.path]
    if len(values) == len(variables):
        for v, value in zip(variables, values, strict=True):
            v.assign(np.asarray(value, dtype=v.dtype))

"""One distributed training step, and its evaluation twin, for every tf.distribute strategy.

Why not `model.fit`: Keras 3's fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585:
the first batch's symbolic build, then the metric reduction). TensorFlow's own multi-worker guide
trains with this loop instead, and it is the same code for the default strategy (one device),
MirroredStrategy (the GPUs of one machine) and MultiWorkerMirroredStrategy (several machines):

- a `tf.function` calls `strategy.run` on each replica's part of a global batch;
- each replica's loss is the sum of its examples' losses divided by the GLOBAL batch size, so the
  gradients the optimizer sums across replicas (Keras's TF optimizer all-reduces them in
  `apply_gradients`) are those of the global batch's mean loss: one replica or eight, the same
  update for the same global batch;
- mixed_float16: the compiled optimizer is Keras's LossScaleOptimizer (model.compile wraps it);
  `scale_loss` scales the loss and `apply_gradients` unscales, skips non-finite steps and adapts
  the scale (tlpipe.runtime allows float16 on one replica only: see `resolve`);
- metrics: each replica returns the sums (loss, correct predictions, examples), summed across
  replicas and workers by `strategy.reduce`, then added to running totals the way Keras's `Mean`
  metrics add them (float32 total += batch mean × batch size): on one process, the numbers `fit`
  reported for the same updates. One update per batch, exactly: on a dataset of unknown length
  (streamed shards) Keras 3.15's `fit` counted an optimizer iteration more per epoch.

The totals live in a local (not mirrored) variable: it is read only for logs, backups and the
end of an epoch, so a step does not wait for the host.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from tlpipe.runtime import task_name

# Running totals: [loss × examples, correct predictions, examples] (float32, as Keras's Mean).
LOSS, CORRECT, COUNT = 0, 1, 2


class DistributedStep:
    """The train and eval steps of a compiled Keras `model` under the strategy it was built in."""

    def __init__(self, model: Any, *, global_batch: int, label_smoothing: float, jit_compile: bool) -> None:
        import keras
        import tensorflow as tf

        self.model = model
        self.strategy = getattr(model, "distribute_strategy", None) or tf.distribute.get_strategy()
        self.global_batch = int(global_batch)
        self.optimizer = model.optimizer
        self.loss_fn = keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing, reduction=None)
        with self.strategy.scope():
            # Built eagerly under the strategy (as fit does): creating optimizer variables inside
            # the traced step would be a variable created on a non-first call under MWMS.
            if not self.optimizer.built:
                self.optimizer.build(model.trainable_variables)
        self.train_totals = tf.Variable(tf.zeros([3], tf.float32), trainable=False, name="train_totals")
        self.eval_totals = tf.Variable(tf.zeros([3], tf.float32), trainable=False, name="eval_totals")
        self._train = tf.function(self._train_global, jit_compile=jit_compile)
        self._eval = tf.function(self._eval_global, jit_compile=jit_compile)

    # -- inputs -------------------------------------------------------------------------------
    def distribute(self, dataset: Any) -> Any:
        """A dataset of global batches as each replica's part of each batch.

        `experimental_distribute_dataset` with the DATA auto-shard policy: every worker runs the
        same input pipeline (a pure function of seed and epoch) and keeps its slice of each
        global batch, so that the cluster trains on exactly the batches one process would
        (tested against one process), whatever the data source. The price: each worker reads
        and augments the whole global batch. `distribute_datasets_from_function` (each worker
        builds only its part, FILE sharding over TFRecord shards) scales the input side but
        changes which examples meet in a batch; see the README."""
        import tensorflow as tf

        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        return self.strategy.experimental_distribute_dataset(dataset.with_options(options))

    # -- steps --------------------------------------------------------------------------------
    def train(self, batch: Any) -> None:
        self._train(batch)

    def evaluate(self, batch: Any) -> None:
        self._eval(batch)

    def _replica_train(self, x: Any, y: Any) -> Any:
        import tensorflow as tf

        model = self.model
        with tf.GradientTape() as tape:
            pred = model(x, training=True)
            per_example = self.loss_fn(y, pred)
            loss = tf.reduce_sum(per_example) / tf.cast(self.global_batch, per_example.dtype)
            if model.losses:  # regularisation: once per global step, split across replicas
                loss += tf.add_n(model.losses) / tf.cast(self.strategy.num_replicas_in_sync, loss.dtype)
            scaled = self.optimizer.scale_loss(loss)
        weights = model.trainable_variables
        grads = tape.gradient(scaled, weights)
        self.optimizer.apply_gradients(zip(grads, weights, strict=True))
        return _sums(y, pred, per_example)

    def _replica_eval(self, x: Any, y: Any) -> Any:
        pred = self.model(x, training=False)
        return _sums(y, pred, self.loss_fn(y, pred))

    def _train_global(self, batch: Any) -> None:
        self._accumulate(self.train_totals, self.strategy.run(self._replica_train, args=batch))

    def _eval_global(self, batch: Any) -> None:
        self._accumulate(self.eval_totals, self.strategy.run(self._replica_eval, args=batch))

    def _accumulate(self, totals: Any, per_replica: Any) -> None:
        import tensorflow as tf

        s = self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        n = s[COUNT]
        # Keras's loss tracker: Mean.update_state(batch mean loss, sample_weight=batch size).
        mean = tf.math.divide_no_nan(s[LOSS], n)
        totals.assign_add(tf.stack([mean * n, s[CORRECT], n]))

    # -- metrics ------------------------------------------------------------------------------
    def reset(self, totals: Any, values: Any = None) -> None:
        import numpy as np

        totals.assign(np.zeros(3, np.float32) if values is None else np.asarray(values, np.float32))

    @staticmethod
    def results(totals: Any, prefix: str = "") -> dict[str, float]:
        """loss and accuracy as Keras's Mean reports them (float32 total / count)."""
        import numpy as np

        t = np.asarray(totals.numpy(), np.float32)
        count = t[COUNT]
        div = (lambda a: float(a / count)) if count else (lambda a: 0.0)
        return {f"{prefix}loss": div(t[LOSS]), f"{prefix}accuracy": div(t[CORRECT])}


def _sums(y: Any, pred: Any, per_example: Any) -> Any:
    """This replica's [sum of losses, correct predictions, examples] (float32)."""
    import tensorflow as tf

    pred = tf.cast(pred, tf.float32)
    correct = tf.cast(tf.equal(tf.argmax(y, axis=-1), tf.argmax(pred, axis=-1)), tf.float32)
    per_example = tf.cast(per_example, tf.float32)
    n = tf.cast(tf.shape(per_example)[0], tf.float32)
    return tf.stack([tf.reduce_sum(per_example), tf.reduce_sum(correct), n])


def in_cluster(strategy: Any) -> bool:
    """Whether `strategy` spans several workers (a TF_CONFIG cluster of more than one task)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return sum(len(tasks) for tasks in spec.values()) > 1


def broadcast_from_first_replica(strategy: Any, data: bytes) -> bytes:
    """The first replica's (the chief's) `data` on every worker, of the same length everywhere: an
    all-reduce sum of int32 words to which every other replica adds zeros (integer sums are
    exact, so any bytes travel unchanged)."""
    import tensorflow as tf

    words = np.frombuffer(data + b"\0" * (-len(data) % 4), np.int32)
    local = tf.constant(words)

    def mine() -> Any:
        first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
        return tf.where(first, local, tf.zeros_like(local))

    @tf.function
    def reduce() -> Any:  # as the training step reduces: strategy.run, then strategy.reduce
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(mine), axis=None)

    return np.asarray(reduce().numpy(), np.int32).tobytes()[: len(data)]


def sync_from_chief(strategy: Any, model: Any, state_json: str) -> str:
    """Every worker continues from the chief's state: the loop state (JSON) and, when the chief
    resumed from a backup, its weights, optimizer variables and dropout RNG state, byte for byte.

    Only the chief has the backups (its checkout is the one that writes); the other workers start
    from the head model like a fresh run and would otherwise train other steps than the chief."""
    raw = state_json.encode()
    size = int(np.frombuffer(broadcast_from_first_replica(strategy, np.int32(len(raw)).tobytes()), np.int32)[0])
    if size == 0:
        return ""  # the chief starts fresh too: nothing to send (an empty collective would crash)
    text = broadcast_from_first_replica(strategy, raw[:size].ljust(size, b"\0")).decode()
    variables = list(model.variables) + list(model.optimizer.variables)
    arrays = [np.asarray(v.numpy()) for v in variables]
    data = broadcast_from_first_replica(strategy, b"".join(a.tobytes() for a in arrays))
    offset = 0
    for v, a in zip(variables, arrays, strict=True):
        v.assign(np.frombuffer(data[offset : offset + a.nbytes], a.dtype).reshape(a.shape))
        offset += a.nbytes
    return text


LOST_ERRORS = ("UnavailableError", "DeadlineExceededError", "CancelledError")


def lost_worker(err: BaseException, phase: str) -> ConnectionError | None:
    """The one-line error for a collective op that failed because a worker is gone (it crashed,
    was killed or stopped answering for the collective timeout); None for any other error."""
    if type(err).__name__ not in LOST_ERRORS:
        return None
    message = getattr(err, "message", str(err))
    mine = task_name()
    tasks = [t for t in dict.fromkeys(re.findall(r"/job:\w+/replica:\d+/task:\d+", message)) if t != mine]
    tasks = [t.replace("/replica:0", "") for t in tasks] or ["a peer"]
    return ConnectionError(
        f"{phase}: lost {', '.join(tasks)} of the multi-worker cluster ({type(err).__name__}); "
        "rerun the same command on every worker: fine-tuning resumes from the chief's last backup"
    )

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
  metrics add them (float32 total += batch mean × batch size), so that one process reports what
  `fit` reported.

The totals live in a local (not mirrored) variable: it is read only for logs, backups and the
end of an epoch, so a step does not wait for the host.
"""

from __future__ import annotations

from typing import Any

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

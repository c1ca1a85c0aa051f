"""The GPU preset's fine-tuning throughput: `python benchmarks/gpu_throughput.py STEPS` prints
images/s as JSON. The preset's model (every backbone layer trainable but BatchNorm, its optimizer,
batch size and runtime switches) on random 32×32 images resized in the model, as the pipeline
feeds CIFAR-10; random data, since only speed is measured."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def measure(steps: int, overrides: dict | None = None) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from tlpipe import runtime
    from tlpipe.config.params import deep_merge, parse_params
    from tlpipe.model.classifier import build_classifier, resolve_spec
    from tlpipe.paths import Paths
    from tlpipe.training.optim import compile_model, make_optimizer

    base = yaml.safe_load((REPO / "params.yaml").read_text())
    preset = yaml.safe_load((REPO / "presets" / "gpu.yaml").read_text())
    # No ImageNet mirror of the preset's backbone here: random weights cost the same time.
    raw = deep_merge(deep_merge(base, preset), deep_merge({"model": {"weights": "none"}}, overrides or {}))
    params = parse_params(raw, "gpu throughput")
    rt = runtime.configure(params)
    batch = params.finetune.batch_size * rt.replicas
    with rt.strategy.scope():
        spec = resolve_spec(params, (32, 32, 3), 10, Paths(REPO))
        clf = build_classifier(spec)
        clf.backbone.trainable = True
        for layer in clf.backbone.layers:  # BatchNorm stays frozen, as the finetune stage keeps it
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
        f = params.finetune
        opt = make_optimizer(f.optimizer, f.learning_rate, weight_decay=f.weight_decay, momentum=f.momentum)
        compile_model(clf.model, opt, label_smoothing=f.label_smoothing, jit_compile=rt.jit_compile)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch * 4, 32, 32, 3)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, 10, batch * 4), 10)
    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch).prefetch(2)
    warmup = max(2, steps // 10)
    t0 = time.perf_counter()
    clf.model.fit(data, steps_per_epoch=warmup, epochs=1, verbose=0)  # tracing, XLA compilation
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    clf.model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - t0
    return {
        "backbone": params.backbone,
        "image_size": spec.image_size,
        "batch_size": batch,
        "steps": steps,
        "seconds": round(seconds, 2),
        "warmup_seconds": round(compile_s, 2),
        "images_per_s": round(steps * batch / seconds, 1),
        "runtime": rt.settings(),
        "devices": list(rt.devices),
    }


if __name__ == "__main__":
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 300
    overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else None
    print(json.dumps(measure(steps, overrides)))

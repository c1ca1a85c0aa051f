"""The precision policy and XLA a run gets (tlpipe.runtime.resolve), for GPU machines this one is
not: the GPU preset must never combine XLA with a tf.distribute strategy, nor float16 loss scaling
with several replicas, and bfloat16 is used wherever the hardware has it."""

from __future__ import annotations

import shlex

import pytest
import yaml

from stages import presets as presets_cli
from tests.conftest import REPO
from tlpipe.config import presets
from tlpipe.config.params import with_overrides
from tlpipe.runtime import configure, resolve


def gpu_preset(**runtime: object):
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    params = presets.apply(presets.load_preset("gpu"), base)
    return with_overrides(params, runtime=runtime) if runtime else params


@pytest.mark.parametrize(
    ("strategy", "gpus", "replicas", "deterministic", "policy", "xla"),
    [
        ("none", [], 1, False, "mixed_bfloat16", True),  # CPU: bfloat16 units, no loss scaling
        ("none", [(8, 0)], 1, False, "mixed_bfloat16", True),  # A100
        ("none", [(9, 0)], 1, False, "mixed_bfloat16", True),  # H100
        ("none", [(7, 0)], 1, False, "mixed_float16", True),  # V100: float16, one replica
        ("none", [None], 1, False, "mixed_float16", True),  # capability unknown
        ("mirrored", [(8, 6), (8, 6)], 2, False, "mixed_bfloat16", False),
        ("mirrored", [(7, 5), (7, 5)], 2, False, "float32", False),  # no per-replica loss scaling
        ("mirrored", [(7, 0), (8, 0)], 2, False, "float32", False),  # one GPU without bfloat16
        ("mirrored", [(7, 0)], 1, False, "mixed_float16", False),  # one replica: loss scaling is right
        ("multi_worker", [(8, 0)], 1, False, "mixed_bfloat16", False),
        ("none", [(8, 0)], 1, True, "mixed_bfloat16", False),  # Keras turns XLA off under determinism
    ],
)
def test_mixed_precision_and_xla_resolve_per_machine(strategy, gpus, replicas, deterministic, policy, xla) -> None:
    got = resolve(
        mixed_precision=True, xla=True, strategy=strategy, deterministic=deterministic, gpus=gpus, replicas=replicas
    )
    assert (got.policy, got.jit_compile) == (policy, xla)
    # Every setting changed from what params asked says which key and why.
    assert ("float32" in got.policy) == any(n.startswith("runtime.mixed_precision") for n in got.notes)
    assert (not got.jit_compile) == any(n.startswith("runtime.xla") for n in got.notes)


def test_float32_asked_is_float32_everywhere() -> None:
    got = resolve(mixed_precision=False, xla=False, strategy="none", deterministic=True, gpus=[(9, 0)], replicas=1)
    assert (got.policy, got.jit_compile, got.notes) == ("float32", False, ())


@pytest.mark.parametrize("strategy", ["none", "mirrored"])
def test_the_gpu_preset_never_combines_xla_with_a_strategy_or_loss_scaling_with_replicas(strategy: str) -> None:
    rows = presets.runtime_table(gpu_preset(strategy=strategy))
    assert len(rows) == len(presets.MACHINES)
    for row in rows:
        machine, settings = row.split(": ", 1)
        replicas = int(settings.split(" replica")[0])
        assert not (strategy != "none" and "xla true" in row), row
        assert not (replicas > 1 and "mixed_float16" in row), row
        if ">= 8.0" in machine or machine == "no GPU":
            assert "policy mixed_bfloat16" in row, row


def test_presets_cli_prints_the_gpu_settings_and_their_resolution(capsys) -> None:
    presets_cli.main(["gpu"])
    words = dict(w.split("=", 1) for w in shlex.split(capsys.readouterr().out) if w != "-S")
    # params.yaml's strategy (none) is kept: one GPU, XLA on, mixed precision resolved per GPU.
    assert "runtime.strategy" not in words and words["runtime.xla"] == "true"
    assert words["runtime.mixed_precision"] == "true" and words["runtime.deterministic"] == "false"
    presets_cli.main(["gpu", "--runtime"])
    out = capsys.readouterr().out
    assert "1 GPU, compute capability >= 8.0 (A100, L4, H100): 1 replica(s), policy mixed_bfloat16, xla true" in out


def test_configure_on_this_machine_records_what_it_applied() -> None:
    """The GPU preset configured here (no GPU): bfloat16, and config.json's xla is what Keras runs."""
    import keras

    try:
        rt = configure(gpu_preset())
        assert rt.settings() == {
            "strategy": "_DefaultDistributionStrategy",
            "policy": "mixed_bfloat16",
            "xla": True,
            "deterministic": False,
        }
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        rt = configure(gpu_preset(deterministic=True))
        assert rt.settings()["xla"] is False and rt.settings()["deterministic"] is True
    finally:
        keras.mixed_precision.set_global_policy("float32")

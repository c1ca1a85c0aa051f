"""runtime.strategy=multi_worker and TF_CONFIG: who writes the outputs, and the cluster Keras 3
cannot train on refused up front with a message that says why and what to use instead."""

from __future__ import annotations

import json

import pytest

from tests.tiny_project import tiny_params
from tlpipe.config.params import Params
from tlpipe.runtime import cluster_size, configure, is_chief


def tf_config(cluster: dict[str, list[str]], kind: str, index: int) -> str:
    return json.dumps({"cluster": cluster, "task": {"type": kind, "index": index}})


@pytest.mark.parametrize(
    ("cluster", "kind", "index", "chief"),
    [
        ({"worker": ["a:1", "b:1"]}, "worker", 0, True),
        ({"worker": ["a:1", "b:1"]}, "worker", 1, False),
        ({"chief": ["c:1"], "worker": ["a:1"]}, "chief", 0, True),
        ({"chief": ["c:1"], "worker": ["a:1"]}, "worker", 0, False),
    ],
)
def test_one_task_of_a_cluster_writes_the_outputs(monkeypatch, cluster, kind, index, chief) -> None:
    monkeypatch.setenv("TF_CONFIG", tf_config(cluster, kind, index))
    assert is_chief() is chief
    assert cluster_size() == sum(len(v) for v in cluster.values())


def test_without_tf_config_the_process_is_the_chief_of_one(monkeypatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert is_chief() and cluster_size() == 1


def test_bad_tf_config_names_itself(monkeypatch) -> None:
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match=r"TF_CONFIG is not valid JSON: '\{not json'"):
        is_chief()


def test_a_cluster_of_two_workers_is_refused_before_tensorflow_starts(monkeypatch) -> None:
    p = tiny_params()
    p["runtime"]["strategy"] = "multi_worker"
    monkeypatch.setenv("TF_CONFIG", tf_config({"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "worker", 0))
    with pytest.raises(ValueError, match=r"TF_CONFIG names 2 tasks.*keras-team/keras/issues/20585.*mirrored"):
        configure(Params.model_validate(p))

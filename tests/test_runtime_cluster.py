"""runtime.strategy=multi_worker and TF_CONFIG: who writes the outputs, and how long a collective
waits for a lost worker. Two real workers train in tests/test_multi_worker.py."""

from __future__ import annotations

import json

import pytest

from tlpipe.runtime import COLLECTIVE_TIMEOUT_SECONDS, cluster_size, collective_timeout, is_chief


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


def test_the_collective_timeout_defaults_and_a_bad_override_names_itself(monkeypatch) -> None:
    monkeypatch.delenv("TLPIPE_COLLECTIVE_TIMEOUT", raising=False)
    assert collective_timeout() == COLLECTIVE_TIMEOUT_SECONDS
    monkeypatch.setenv("TLPIPE_COLLECTIVE_TIMEOUT", "30")
    assert collective_timeout() == 30.0
    monkeypatch.setenv("TLPIPE_COLLECTIVE_TIMEOUT", "soon")
    with pytest.raises(ValueError, match=r"TLPIPE_COLLECTIVE_TIMEOUT='soon': expected seconds"):
        collective_timeout()

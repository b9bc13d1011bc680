"""The job store against a real redis-server: idempotent creation, guarded transitions, leases."""

from __future__ import annotations

from pathlib import Path

import pytest

from kneenode.errors import ErrorCode, NodeError
from workers.broker import make_client
from workers.jobstate import JobStore
from workers.middleware import backoff_s, classify
from workers.redisproc import running_endpoint, start_redis


def test_embedded_redis_runs_with_aof_and_stops_by_pid(tmp_path: Path) -> None:
    redis = start_redis(tmp_path / "r")
    client = make_client(redis.url)
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert client.config_get("appendfsync")["appendfsync"] == "everysec"
    assert client.config_get("bind")["bind"] == "127.0.0.1"
    assert running_endpoint(tmp_path / "r")["pid"] == redis.pid
    with pytest.raises(NodeError) as err:  # a second node on the same data_dir is refused
        start_redis(tmp_path / "r")
    assert "already running" in err.value.message
    redis.stop()
    assert redis.process.poll() is not None and running_endpoint(tmp_path / "r") is None


def test_create_is_idempotent_and_links_versions(store: JobStore) -> None:
    a, created = store.create("1.2.3", 1, {"chain": ["s1"]})
    assert created and store.create("1.2.3", 1, {"chain": ["s1"]}) == (a, False)
    b, created = store.create("1.2.3", 2, {"chain": ["s1"]})
    assert created and b != a and store.get(b)["previous_job"] == a
    assert store.get(a)["previous_job"] == "" and store.get(a)["state"] == "created"
    # a claim without a record (crash between the two writes) is completed with the same id
    store.client.set(store.key("key", "9.9", "1"), "orphan")
    assert store.create("9.9", 1, {"chain": []}) == ("orphan", True)


def test_transitions_never_overwrite_an_end_state(store: JobStore) -> None:
    job, _ = store.create("1.2.3", 1, {"chain": ["s1", "s2"]})
    assert store.stage_started(job, "s1", 1, "w") == 1
    assert store.get(job)["state"] == "running:s1"
    assert store.cancel(job) and not store.cancel(job)
    assert store.stage_started(job, "s2", 1, "w") == 0  # cancelled: no start
    assert not store.transition(job, 1, state="queued")
    assert store.get(job)["state"] == "cancelled"
    run = store.restart(job, "s2")
    assert run == 2 and store.get(job)["state"] == "queued"
    assert not store.transition(job, 1, state="done")  # a message of the old run
    assert store.transition(job, 2, state="done")
    kinds = [e["kind"] for e in store.events(job)]
    assert kinds == ["created", "start", "cancelled", "retry"]
    assert store.count_by_state()["done"] == 1


def test_lease_lets_a_redelivered_message_take_over(store: JobStore) -> None:
    assert store.acquire_lease("j", "s1", "m1", 60)
    assert store.acquire_lease("j", "s1", "m1", 60)  # same message redelivered after a crash
    assert not store.acquire_lease("j", "s1", "m2", 60)  # a duplicate message
    store.release_lease("j", "s1", "m2")  # not the holder: no effect
    assert not store.acquire_lease("j", "s1", "m2", 60)
    store.release_lease("j", "s1", "m1")
    assert store.acquire_lease("j", "s1", "m2", 60)


def test_stage_histogram_and_counters(store: JobStore) -> None:
    for seconds in (0.004, 0.2, 7000):
        store.observe_stage("segment", seconds)
    h = store.stage_histograms()["segment"]
    assert h["count"] == 3 and h["b0"] == 1 and h["b3"] == 1 and h["b14"] == 1
    store.incr("series_completed")
    assert store.counters() == {"series_completed": 1}


def test_error_classification_and_backoff() -> None:
    class OutOfMemoryError(RuntimeError):  # torch.cuda's class name; no GPU here to raise it
        pass

    assert classify(OutOfMemoryError("x"), "segment", 10).code is ErrorCode.GPU_OOM
    assert classify(OutOfMemoryError("x"), "segment", 10).retryable
    assert classify(FileNotFoundError("f"), "s", 10).code is ErrorCode.FILE_NOT_FOUND
    assert classify(ValueError("v"), "s", 10).code is ErrorCode.PIPELINE_ERROR
    keep = NodeError(ErrorCode.NOT_KNEE, "m")
    assert classify(keep, "s", 10) is keep
    delays = [backoff_s(n, 5, 600) for n in (1, 2, 3, 10)]
    assert 4 <= delays[0] <= 6 and 8 <= delays[1] <= 12 and 16 <= delays[2] <= 24
    assert 480 <= delays[3] <= 720

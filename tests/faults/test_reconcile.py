"""Reconciliation with an external redis (``jobs.redis_url``) and the edge alone (``kneenode scp``
creating jobs, no workers): a job record lost by redis is re-created from the spool, and a
queued job whose stage message is gone is re-sent, by the node's own loop or by ``kneenode retry``.

What a redis loses on power failure (or an operator's mistaken DEL) cannot be produced by
killing a process with ``appendfsync always``, so the loss is made by deleting those keys from
the real redis; everything else is real (storescu, ``kneenode scp``, redis-server).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from tests.support.dcmtk import storescu
from tests.support.mr import mr_series
from tests.support.node import node_env
from tests.support.procs import wait_for
from workers.broker import make_client
from workers.jobstate import JobStore
from workers.reconcile import pending_messages
from workers.redisproc import RedisChild, start_redis

pytestmark = pytest.mark.slow
NS = "kneenode"


@pytest.fixture
def redis(tmp_path: Path):
    child = start_redis(tmp_path / "redis")
    yield child
    child.stop()


def _edge(node_factory, redis: RedisChild, **jobs):
    return node_factory({
        "scp": {"allow_any": True},
        "completion": {"quiet_seconds": 1, "poll_seconds": 0.2},
        "jobs": {"redis_url": redis.url, "chain": "tests.faults.gated_chain:gated_chain",
                 "optional_stages": [], "reconcile_interval_s": 1.0, "reconcile_grace_s": 1.0,
                 **jobs},
    }, command="scp-jobs")


def _send(node, tmp_path: Path, store: JobStore) -> dict:
    files = mr_series(tmp_path / "s", slices=8)
    series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    assert storescu(node.port, files).returncode == 0

    def job() -> dict:
        jobs = [j for j in store.list_jobs() if j["series_uid"] == series_uid]
        return jobs[0] if jobs else {}

    # The marker is written once the hand-off returned: record, message and 'dispatched' are in.
    wait_for(lambda: job().get("state") == "queued"
             and (Path(job()["series_path"]) / "announced").exists(), 60,
             what="a queued, announced job")
    return job()


def _cpu_message_jobs(store: JobStore) -> set[str]:
    return {job_id for job_id, _, _ in pending_messages(store, f"{NS}:mq")}


def _drop_messages(store: JobStore) -> None:
    store.client.delete(f"{NS}:mq:cpu", f"{NS}:mq:cpu.msgs")


def test_lost_job_record_is_recreated_from_the_spool(node_factory, redis, tmp_path: Path) -> None:
    node = _edge(node_factory, redis)
    store = JobStore(make_client(redis.url), NS)
    job = _send(node, tmp_path, store)
    marker = Path(job["series_path"]) / "announced"
    assert json.loads(marker.read_text())["job_id"] == job["id"]
    # What a redis that lost its last writes leaves: no record, no claim, no message.
    store.client.delete(store.key("job", job["id"]), store.key("job", job["id"], "events"),
                        store.key("key", job["series_uid"], "1"),
                        store.key("series", job["series_uid"], "jobs"))
    store.client.zrem(store.key("jobs"), job["id"])
    _drop_messages(store)

    def recreated() -> bool:
        jobs = store.list_jobs()
        return (len(jobs) == 1 and jobs[0]["state"] == "queued"
                and json.loads(marker.read_text()).get("job_id") == jobs[0]["id"])

    wait_for(recreated, 30, what="the job re-created, queued and recorded in the marker")
    (again,) = store.list_jobs()
    assert again["series_path"] == job["series_path"] and again["id"] != job["id"]
    assert _cpu_message_jobs(store) == {again["id"]}  # its first stage was sent again
    assert "complete series has no job any more" in node.log()


def test_stranded_queued_job_is_re_sent_by_the_edge(node_factory, redis, tmp_path: Path) -> None:
    node = _edge(node_factory, redis)
    store = JobStore(make_client(redis.url), NS)
    job = _send(node, tmp_path, store)
    assert _cpu_message_jobs(store) == {job["id"]}
    _drop_messages(store)  # the message is gone, the job still says queued
    wait_for(lambda: _cpu_message_jobs(store) == {job["id"]}
             and "stranded job re-sent" in node.log(), 30, what="the message re-sent")
    kinds = [e["kind"] for e in store.events(job["id"])]
    assert kinds.count("reconciled") == 1 and store.get(job["id"])["state"] == "queued"
    assert node.log().count("stranded job re-sent") == 1


def test_retry_re_sends_a_stranded_job_and_refuses_a_live_one(node_factory, redis,
                                                              tmp_path: Path) -> None:
    node = _edge(node_factory, redis, reconcile_interval_s=3600)  # only `retry` reconciles here
    store = JobStore(make_client(redis.url), NS)
    job = _send(node, tmp_path, store)
    env = node_env(KNEENODE_CONFIG=str(node.config_path), COLUMNS="200")

    def retry() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "kneenode.cli", "retry", job["id"]],
                              env=env, capture_output=True, text=True, timeout=60, check=False)

    live = retry()
    assert live.returncode == 1 and "nothing to retry" in live.stderr
    _drop_messages(store)
    stranded = retry()
    assert stranded.returncode == 0 and "sent again" in stranded.stdout, stranded.stderr
    assert _cpu_message_jobs(store) == {job["id"]}
    assert store.get(job["id"])["state"] == "queued"

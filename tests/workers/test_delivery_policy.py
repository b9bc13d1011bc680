"""The deliver stage retries on the ``delivery`` policy (a PACS may be down for an hour)."""

from __future__ import annotations

from kneenode.settings import DeliverySettings, JobsSettings, Settings
from workers.retries import retry_policy


def test_retry_policy_per_stage():
    s = Settings(jobs=JobsSettings(max_retries=3, retry_min_backoff_s=1, retry_max_backoff_s=9),
                 delivery=DeliverySettings(max_attempts=12, backoff_min_s=10, backoff_max_s=600))
    assert retry_policy(s, "segment") == (3, 1, 9)
    assert retry_policy(s, "deliver") == (11, 10, 600)
    total = sum(min(10 * 2**i, 600) for i in range(11))
    assert 3000 <= total <= 4500  # the default schedule spans about an hour


def test_deliver_stage_uses_delivery_attempts(cluster_factory, monkeypatch):
    monkeypatch.setenv("KNEENODE_DELIVERY__MAX_ATTEMPTS", "2")
    monkeypatch.setenv("KNEENODE_DELIVERY__BACKOFF_MIN_S", "0.1")
    monkeypatch.setenv("KNEENODE_DELIVERY__BACKOFF_MAX_S", "0.2")
    cluster = cluster_factory(chain="tests.workers.chains:delivery_chain")  # jobs.max_retries = 3
    cluster.start_workers()
    job_id = cluster.submit({"deliver": "transient:99"})
    job = cluster.wait(job_id, {"done", "failed"})
    assert job["state"] == "failed" and job["error"]["code"] == "SEND_FAILED"
    assert job["stages"]["deliver"]["attempts"] == 2  # delivery.max_attempts, not 1 + 3

"""``kneenode scp`` on its own creates jobs in a shared redis (the split deployment)."""

from __future__ import annotations

import pydicom

from kneenode.settings import Settings
from tests.support.dcmtk import storescu
from tests.support.mr import mr_series
from tests.support.procs import wait_for
from workers.broker import make_client
from workers.jobstate import JobStore
from workers.redisproc import start_redis


def test_edge_alone_creates_queued_jobs_in_shared_redis(node_factory, tmp_path):
    redis = start_redis(tmp_path / "redis")
    try:
        node = node_factory({"jobs": {"redis_url": redis.url},
                             "completion": {"quiet_seconds": 1, "poll_seconds": 0.2}},
                            command="scp-jobs")
        files = mr_series(tmp_path / "s", slices=24)
        assert storescu(node.port, files).returncode == 0
        store = JobStore(make_client(redis.url), Settings().jobs.namespace)
        series_uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID)
        wait_for(lambda: any(j["series_uid"] == series_uid and j["state"] == "queued"
                             for j in store.list_jobs()), 30, what="a queued job for the series")
        (job,) = [j for j in store.list_jobs() if j["series_uid"] == series_uid]
        assert job["state"] == "queued" and job["calling_ae"] == "PACS"  # no workers here
    finally:
        redis.stop()

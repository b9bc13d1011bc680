"""Fixtures of the job-system tests: a real redis-server and real worker processes.

Everything is started on free loopback ports inside the test's tmp folder and stopped by PID.
Worker processes read their settings from the ``kneenode.toml`` written here (``KNEENODE_CONFIG``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kneenode.settings import Settings, load_settings
from scp.announce import CompletedSeries
from workers.broker import make_broker, make_client
from workers.intake import JobCreator
from workers.jobstate import JobStore
from workers.redisproc import RedisChild, start_redis
from workers.stages import load_chain
from workers.supervisor import ChildSpec, Supervisor

FAST_JOBS: dict[str, Any] = {
    "chain": "tests.workers.chains:fault_chain",
    "optional_stages": [],
    "poll_ms": 200,
    "retry_min_backoff_s": 0.2,
    "retry_max_backoff_s": 1.0,
    "max_retries": 3,
    "stage_time_limits": {"s3": 2.0},
    "watchdog_grace_s": 1.0,
    "shutdown_grace_s": 0.5,
    "gpu_devices": ["cpu"],
    "cpu_threads": 2,
    "io_threads": 2,
    "http_port": 0,
    # Far beyond every wait below: a test that sees a killed worker's stage run again within its
    # deadline proves the supervisor (or start-up recovery) requeued it, not the heartbeat.
    "heartbeat_timeout_s": 600,
}

# Deadline of a wait for a job state: generous, because the suite runs on loaded CPUs; it only
# matters when the awaited state never comes.
JOB_WAIT_S = 120.0


def toml_value(v: Any) -> str:
    """A TOML literal for the few value types the tests use."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(v)


def write_config(path: Path, data_dir: Path, jobs: dict[str, Any]) -> Path:
    """Write a kneenode.toml with ``data_dir`` and a [jobs] section."""
    lines = [f"data_dir = {json.dumps(str(data_dir))}", "", "[jobs]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in jobs.items()]
    lines += ["", "[logging]", 'level = "INFO"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass
class Cluster:
    """redis + supervisor + a job creator, all real; jobs are made from fake complete series."""

    root: Path
    settings: Settings
    config: Path
    redis: RedisChild
    store: JobStore
    creator: JobCreator
    supervisor: Supervisor | None = None
    specs: list[ChildSpec] = field(default_factory=list)

    def start_workers(self) -> Supervisor:
        """Start the worker processes (cpu, gpu, io)."""
        self.supervisor = Supervisor(self.settings, self.redis.url, self.specs, self.config)
        self.supervisor.start()
        return self.supervisor

    def stop_workers(self) -> None:
        """Stop the worker processes gracefully."""
        if self.supervisor is not None:
            self.supervisor.stop()
            self.supervisor = None

    def series(self, behaviour: dict[str, str] | None = None, **summary: Any) -> CompletedSeries:
        """A complete series version (folder + summary.json) with stage behaviours."""
        uid = summary.pop("series_uid", f"1.2.826.0.1.3680043.10.{uuid.uuid4().int % 10**12}")
        version = int(summary.pop("version", 1))
        folder = self.root / "spool" / uid / f"v{version}"
        folder.mkdir(parents=True, exist_ok=True)
        s = {
            "study_uid": "1.2.3", "series_uid": uid, "version": version, "calling_ae": "PACS",
            "modality": "MR", "series_description": "Sag 3D DESS knee", "protocol_name": "",
            "body_part_examined": "KNEE", "instance_count": 160, "sop_class_uids": [],
            "geometry": {"is_3d": True, "slices": 160, "consistent": True, "reason": None},
            "behaviour": behaviour or {}, **summary,
        }
        (folder / "summary.json").write_text(json.dumps(s), encoding="utf-8")
        return CompletedSeries("1.2.3", uid, version, folder, s)

    def submit(self, behaviour: dict[str, str] | None = None, **summary: Any) -> str:
        """Create a job as the edge would; return its id."""
        return self.creator.create(self.series(behaviour, **summary))

    def wait(self, job_id: str, states: set[str], timeout: float = JOB_WAIT_S) -> dict[str, Any]:
        """Wait until the job's state (or its ``running:<stage>``) is in ``states``."""
        deadline = time.monotonic() + timeout
        job: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            job = self.store.get(job_id)
            if job and (job["state"] in states or job["state"].split(":")[0] in states):
                return job
            time.sleep(0.05)
        events = self.store.events(job_id)
        raise AssertionError(f"job {job_id} not in {states} after {timeout}s: {job}\n{events}")

    def worker_pid(self, queue: str) -> int:
        """PID of a live worker process consuming ``queue`` (from its redis record)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for wid in self.store.client.smembers(self.store.key("workers")):
                rec = self.store.client.hgetall(self.store.key("worker", wid))
                if rec and queue in rec.get("queues", "").split(","):
                    return int(rec["pid"])
            time.sleep(0.05)
        raise AssertionError(f"no live worker on {queue}")


def make_cluster(root: Path, monkeypatch: pytest.MonkeyPatch, **jobs: Any) -> Cluster:
    """Start redis and write the config; workers start with :meth:`Cluster.start_workers`."""
    root.mkdir(parents=True, exist_ok=True)
    redis = start_redis(root / "redis")
    config = write_config(root / "kneenode.toml", root / "data",
                          {**FAST_JOBS, **jobs, "redis_url": redis.url})
    monkeypatch.setenv("KNEENODE_CONFIG", str(config))
    settings = load_settings()
    store = JobStore(make_client(redis.url), settings.jobs.namespace)
    creator = JobCreator(settings, store, make_broker(redis.url, settings.jobs), load_chain(settings))
    specs = [ChildSpec(("cpu",), 2), ChildSpec(("gpu",), 1, "cpu"), ChildSpec(("io",), 2)]
    return Cluster(root, settings, config, redis, store, creator, specs=specs)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    """A JobStore (namespace ``kntest``) on a private real redis-server, stopped afterwards."""
    child = start_redis(tmp_path / "redis")
    try:
        yield JobStore(make_client(child.url), "kntest")
    finally:
        child.stop()


@pytest.fixture
def cluster_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Cluster]]:
    """Make clusters; every worker and redis started is stopped afterwards (by PID)."""
    made: list[Cluster] = []

    def make(name: str = "c", **jobs: Any) -> Cluster:
        c = make_cluster(tmp_path / name, monkeypatch, **jobs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop_workers()
        c.redis.stop()


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    """A running cluster: redis + cpu, gpu and io worker processes."""
    c = cluster_factory()
    c.start_workers()
    return c

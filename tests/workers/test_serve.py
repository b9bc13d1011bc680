"""``kneenode serve`` as a real process: clean start/stop, SIGTERM requeues, HTTP status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from kneenode.settings import load_settings
from tests.support.node import node_env
from tests.support.procs import wait_for
from tests.workers.conftest import FAST_JOBS, write_config
from workers.broker import make_broker, make_client
from workers.intake import JobCreator
from workers.jobstate import JobStore
from workers.stages import load_stages


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = node_env(KNEENODE_CONFIG=str(config))
    with open(log, "ab") as fh:
        return subprocess.Popen([sys.executable, "-m", "kneenode.cli", "serve", "--no-scp"],
                                env=env, stdout=fh, stderr=subprocess.STDOUT)


def _ready(data_dir: Path, proc: subprocess.Popen[bytes], log: Path) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        info_path = data_dir / "serve.json"
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        if info.get("pid") == proc.pid:  # not a stale file of a killed run
            r = httpx.get(f"http://127.0.0.1:{info['http_port']}/health", timeout=5)
            if r.status_code == 200:
                return info
        time.sleep(0.1)
    raise AssertionError("serve not ready: " + log.read_text()[-3000:])


def _aof_written(client: Any) -> None:
    """Wait until redis has written its whole AOF buffer to the file (``appendfsync everysec``
    may postpone the write while a background fsync runs): what a SIGKILL must not lose."""

    def written() -> bool:
        info = client.info("persistence")
        return int(info["aof_buffer_length"]) == 0 and int(info["aof_pending_bio_fsync"]) == 0

    wait_for(written, 30, interval=0.05, what="redis to write its AOF")


def _gone(pid: int) -> bool:
    return not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    return proc.wait(60)


def _client(root: Path, info: dict) -> Any:
    """A job-submitting helper on the served node's redis (the tests' Cluster, without workers)."""
    from tests.workers.conftest import Cluster

    settings = load_settings()
    store = JobStore(make_client(info["redis_url"]), settings.jobs.namespace)
    creator = JobCreator(settings, store, make_broker(info["redis_url"], settings.jobs),
                         load_stages(settings))
    return Cluster(root, settings, root / "kneenode.toml", None, store, creator)  # type: ignore[arg-type]


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    jobs = {k: v for k, v in FAST_JOBS.items() if k != "redis_url"}
    config = write_config(tmp_path / "kneenode.toml", tmp_path / "data", jobs)
    monkeypatch.setenv("KNEENODE_CONFIG", str(config))
    procs: list[subprocess.Popen[bytes]] = []

    def start() -> tuple[subprocess.Popen[bytes], dict]:
        proc = _start(config, tmp_path / "serve.log")
        procs.append(proc)
        return proc, _ready(tmp_path / "data", proc, tmp_path / "serve.log")

    yield start, tmp_path
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_serve_sigterm_requeues_running_stage_and_http_reports(served) -> None:
    start, root = served
    proc, info = start()
    helper = _client(root, info)
    settings, store = helper.settings, helper.store
    done_id = helper.submit()
    helper.wait(done_id, {"done"})
    failed_id = helper.submit({"s3": "permanent"})
    helper.wait(failed_id, {"failed"})
    job_id = helper.submit({"s2": "sleep:60"})
    helper.wait(job_id, {"running:s2"})
    summary = Path(store.get(job_id)["series_path"]) / "summary.json"

    assert _stop(proc) == 0  # SIGTERM: graceful, well before the 60 s stage would end
    assert _gone(info["redis_pid"]) and all(_gone(p) for p in info["worker_pids"])
    assert not (root / "data" / "serve.json").exists()
    assert not (root / "data" / "redis" / "endpoint.json").exists()

    # The embedded redis kept everything (AOF): the requeued stage runs on the next start.
    summary.write_text(summary.read_text().replace("sleep:60", "ok"))
    proc, info = start()
    store = JobStore(make_client(info["redis_url"]), settings.jobs.namespace)
    helper.store = store
    job = helper.wait(job_id, {"done", "failed"})
    assert job["state"] == "done"
    kinds = [e["kind"] for e in store.events(job_id)]
    assert "requeued" in kinds and kinds.count("start") == 5  # s2 twice, s1/s3/s4 once

    base = f"http://127.0.0.1:{info['http_port']}"
    health = httpx.get(f"{base}/health").json()
    assert health["redis"] == "ok" and health["status"] == "ok"
    assert health["workers"] == {"cpu": 1, "gpu": 1, "io": 1}
    assert health["disk"]["free_bytes"] > 0
    jobs = httpx.get(f"{base}/jobs").json()
    assert {j["id"] for j in jobs["jobs"]} == {done_id, failed_id, job_id}
    failed = httpx.get(f"{base}/jobs", params={"state": "failed"}).json()["jobs"]
    assert [j["id"] for j in failed] == [failed_id]
    one = httpx.get(f"{base}/jobs/{failed_id}").json()
    assert one["error"]["code"] == "INVALID_FORMAT" and one["events"][-1]["kind"] == "failed"
    assert httpx.get(f"{base}/jobs/nope").status_code == 404
    metrics = httpx.get(f"{base}/metrics").text
    assert 'kneenode_jobs{state="done"} 2.0' in metrics
    assert 'kneenode_jobs{state="failed"} 1.0' in metrics
    assert "kneenode_series_completed_total 3.0" in metrics
    assert "kneenode_instances_received_total 480.0" in metrics
    assert 'kneenode_stage_duration_seconds_count{stage="s1"} 3.0' in metrics
    assert 'kneenode_workers{queue="gpu"} 1.0' in metrics
    assert 'kneenode_queue_depth{queue="cpu"} 0.0' in metrics

    assert _stop(proc, signal.SIGINT) == 0
    assert _gone(info["redis_pid"]) and all(_gone(p) for p in info["worker_pids"])


def test_serve_without_redis_server_says_so(tmp_path: Path) -> None:
    jobs = {**{k: v for k, v in FAST_JOBS.items() if k != "redis_url"},
            "redis_server": "/nonexistent/redis-server"}
    config = write_config(tmp_path / "kneenode.toml", tmp_path / "data", jobs)
    env = node_env(KNEENODE_CONFIG=str(config), COLUMNS="200")
    out = subprocess.run([sys.executable, "-m", "kneenode.cli", "serve", "--no-scp"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    assert "redis-server" in out.stderr and "jobs.redis_url" in out.stderr


def test_serve_restarts_its_redis_after_kill_9(served) -> None:
    start, root = served
    proc, info = start()
    helper = _client(root, info)
    store = helper.store
    before = helper.submit()
    helper.wait(before, {"done"})
    _aof_written(store.client)
    os.kill(info["redis_pid"], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        new = json.loads((root / "data" / "serve.json").read_text())
        if new["redis_pid"] != info["redis_pid"]:
            break
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    assert new["redis_url"] == info["redis_url"]  # same port: every client reconnects
    assert store.get(before)["state"] == "done"  # the AOF kept it
    after = helper.submit()
    assert helper.wait(after, {"done", "failed"})["state"] == "done"
    assert _stop(proc) == 0 and _gone(new["redis_pid"])


def test_restart_after_whole_node_killed_resumes_at_once(served) -> None:
    """Power-loss-like: serve, its workers and redis all SIGKILLed mid-stage; the next start
    requeues what the dead workers held without waiting for the 60 s heartbeat timeout."""
    start, root = served
    proc, info = start()
    helper = _client(root, info)
    settings, store = helper.settings, helper.store
    job_id = helper.submit({"s2": "sleep:60"})
    helper.wait(job_id, {"running:s2"})
    summary = Path(store.get(job_id)["series_path"]) / "summary.json"
    _aof_written(store.client)
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children()]
    for p in family:
        p.kill()
    psutil.wait_procs(family, timeout=10)
    summary.write_text(summary.read_text().replace("sleep:60", "ok"))
    t0 = time.monotonic()
    proc, info = start()
    helper.store = JobStore(make_client(info["redis_url"]), settings.jobs.namespace)
    assert helper.wait(job_id, {"done", "failed"})["state"] == "done"
    # not by the heartbeat (FAST_JOBS sets it far beyond any wait): at start-up
    assert time.monotonic() - t0 < settings.jobs.heartbeat_timeout_s
    assert _stop(proc) == 0

"""A job crosses the chain in separate worker processes; crashes and restarts lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil

from tests.support.mr import mr_series
from tests.support.node import node_env
from tests.support.procs import wait_for
from tests.workers.chains import trace_lines
from tests.workers.conftest import Cluster
from workers.stages import is_done


def _ends(job_dir: Path) -> Counter[str]:
    return Counter(line[0] for line in trace_lines(job_dir) if line[1] == "end")


def test_job_crosses_chain_in_separate_processes(cluster: Cluster) -> None:
    job_id = cluster.submit()
    job = cluster.wait(job_id, {"done", "failed"})
    assert job["state"] == "done", job
    assert job["progress"] == 1.0
    job_dir = Path(job["job_dir"])
    assert _ends(job_dir) == {"s1": 1, "s2": 1, "s3": 1, "s4": 1}  # s5 optional, not enabled
    pids = {line[0]: line[3] for line in trace_lines(job_dir)}
    assert pids["s1"] == pids["s3"] != pids["s2"] != pids["s4"]  # cpu, gpu, io processes
    assert all(is_done(job_dir, s) for s in ("s1", "s2", "s3", "s4"))
    kinds = [e["kind"] for e in cluster.store.events(job_id)]
    assert kinds[:3] == ["created", "selected", "queued"] and kinds[-1] == "done"
    assert all(job["stages"][s]["state"] == "done" for s in ("s1", "s2", "s3", "s4"))
    assert all(job["stages"][s]["duration"] >= 0 for s in ("s1", "s2", "s3", "s4"))


def test_same_series_version_is_one_job_and_resend_links(cluster: Cluster) -> None:
    series = cluster.series()
    first = cluster.creator.create(series)
    assert cluster.creator.create(series) == first  # announced again after a crash: same job
    cluster.wait(first, {"done"})
    again = cluster.series(series_uid=series.series_uid, version=2)
    second = cluster.creator.create(again)
    assert second != first
    assert cluster.store.get(second)["previous_job"] == first
    cluster.wait(second, {"done"})


def test_kill_9_worker_mid_stage_completes_once(cluster: Cluster) -> None:
    job_id = cluster.submit({"s2": "sleep:3"})
    job_dir = Path(cluster.wait(job_id, {"running:s2"})["job_dir"])
    wait_for(lambda: ["s2", "start"] in [line[:2] for line in trace_lines(job_dir)], 60,
             what="s2 to start its work")  # killed inside the stage, not before it began
    os.kill(cluster.worker_pid("gpu"), signal.SIGKILL)
    job = cluster.wait(job_id, {"done", "failed"})
    assert job["state"] == "done", job
    lines = trace_lines(Path(job["job_dir"]))
    starts = Counter(line[0] for line in lines if line[1] == "start")
    assert starts["s2"] == 2  # started again after the crash ...
    assert _ends(Path(job["job_dir"])) == {"s1": 1, "s2": 1, "s3": 1, "s4": 1}  # ... done once
    assert "worker_exit" in [e["kind"] for e in cluster.store.events(job_id)]


def test_kill_9_of_whole_worker_host_recovers_by_heartbeat(cluster_factory) -> None:
    """No supervisor survives: dramatiq's heartbeat timeout hands the message to a new worker."""
    c: Cluster = cluster_factory(heartbeat_timeout_s=2, maintenance_chance=1000000)
    env = node_env(KNEENODE_CONFIG=str(c.config))
    cmd = [sys.executable, "-m", "kneenode.cli", "worker", "--queues", "gpu,cpu,io"]
    host = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        job_id = c.submit({"s2": "sleep:30"})
        c.wait(job_id, {"running:s2"})
        children = psutil.Process(host.pid).children()
        assert len(children) == 2  # gpu process + cpu,io process
        for proc in [psutil.Process(host.pid), *children]:
            proc.kill()
        host.wait(30)
        psutil.wait_procs(children, timeout=5)
        c.store.client.hset(c.store.key("job", job_id), "updated", 0)  # nothing else changes
        ids = c.store.client.smembers(c.store.key("workers"))
        c.store.client.delete(*[c.store.key("worker", w) for w in ids] or ["none"])
        # The stage would sleep 30 s again: let the rerun be quick (the behaviour is re-read).
        summary = Path(c.store.get(job_id)["series_path"]) / "summary.json"
        summary.write_text(summary.read_text().replace("sleep:30", "ok"))
        c.start_workers()
        job = c.wait(job_id, {"done", "failed"})
        assert job["state"] == "done", job
        assert _ends(Path(job["job_dir"])) == {"s1": 1, "s2": 1, "s3": 1, "s4": 1}
    finally:
        if host.poll() is None:
            host.kill()


def test_redis_restart_with_jobs_queued(cluster: Cluster) -> None:
    cluster.stop_workers()
    jobs = [cluster.submit() for _ in range(5)]
    assert all(cluster.store.get(j)["state"] == "queued" for j in jobs)
    port, folder = cluster.redis.port, cluster.redis.folder
    cluster.redis.stop()  # SIGTERM: redis writes the AOF
    from workers.redisproc import start_redis

    cluster.redis = start_redis(folder, port=port)
    cluster.start_workers()
    for j in jobs:
        assert cluster.wait(j, {"done", "failed"})["state"] == "done"
    # Workers already running survive a second restart: they reconnect and go on.
    cluster.redis.stop()
    cluster.redis = start_redis(folder, port=port)
    later = cluster.submit()
    assert cluster.wait(later, {"done", "failed"})["state"] == "done"


def test_default_chain_runs_prepare_in_a_worker(cluster_factory) -> None:
    c: Cluster = cluster_factory(chain="tests.workers.chains:prepare_chain")
    c.start_workers()
    series = c.series()
    mr_series(series.path, slices=24)
    job_id = c.creator.create(series)
    job = c.wait(job_id, {"done", "failed"})
    assert job["state"] == "done", job
    assert (Path(job["job_dir"]) / "prepare" / "image.nii").exists()
    broken = c.series()
    (broken.path / "0001.dcm").write_bytes(b"not dicom")
    job = c.wait(c.creator.create(broken), {"done", "failed"})
    assert job["state"] == "failed" and job["error"]["code"] == "DICOM_ERROR"
    assert job["stages"]["prepare"]["attempts"] == 1  # permanent: no retry


def test_gpu_process_runs_one_job_at_a_time(cluster: Cluster) -> None:
    jobs = [cluster.submit({"s2": "sleep:1"}) for _ in range(2)]
    spans = []
    for j in jobs:
        job = cluster.wait(j, {"done", "failed"})
        assert job["state"] == "done"
        lines = {(line[0], line[1]): float(line[4]) for line in trace_lines(Path(job["job_dir"]))}
        spans.append((lines[("s2", "start")], lines[("s2", "end")]))
    (_, first_end), (second_start, _) = sorted(spans)
    assert first_end <= second_start  # the second s2 started only after the first ended

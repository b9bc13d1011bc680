"""Failure policy with real worker processes: retries, permanent errors, time limits, cancel."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil

from tests.support.node import node_env
from tests.support.procs import wait_for
from tests.workers.chains import trace_lines
from tests.workers.conftest import Cluster


def _kinds(cluster: Cluster, job_id: str) -> list[str]:
    return [e["kind"] for e in cluster.store.events(job_id)]


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = node_env(KNEENODE_CONFIG=str(cluster.config), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "kneenode.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def test_transient_error_retried_with_backoff_then_done(cluster: Cluster) -> None:
    job_id = cluster.submit({"s2": "flaky:2", "s4": "transient:1"})
    job = cluster.wait(job_id, {"done", "failed"})
    assert job["state"] == "done", job
    retries = [e for e in cluster.store.events(job_id) if e["kind"] == "retry"]
    assert [(e["stage"], e["code"]) for e in retries] == [
        ("s2", "GPU_OOM"), ("s2", "GPU_OOM"), ("s4", "SEND_FAILED")]
    # exponential: 0.2 s then 0.4 s (+-20 % jitter)
    assert 0.16 <= retries[0]["delay_s"] <= 0.24 and 0.32 <= retries[1]["delay_s"] <= 0.48
    starts = [e for e in cluster.store.events(job_id) if e["kind"] == "start" and e["stage"] == "s2"]
    assert starts[2]["t"] - starts[1]["t"] >= 0.3  # the second retry waited its backoff
    assert job["stages"]["s2"]["attempts"] == 3
    # Done after retries: no stale SEND_FAILED on the job or its stage (the events keep it).
    assert job["error"] is None and job["stages"]["s4"]["error"] is None
    ends = Counter(line[0] for line in trace_lines(Path(job["job_dir"])) if line[1] == "end")
    assert ends == {"s1": 1, "s2": 1, "s3": 1, "s4": 1}


def test_transient_error_gives_up_after_max_retries(cluster: Cluster) -> None:
    job_id = cluster.submit({"s4": "transient:99"})
    job = cluster.wait(job_id, {"done", "failed"})
    assert job["state"] == "failed"
    assert job["error"]["code"] == "SEND_FAILED" and "retry" in job["error"]["hint"]
    assert job["stages"]["s4"]["attempts"] == 4  # 1 + max_retries (3)
    # counted just after the job is marked failed: wait for it rather than race it
    wait_for(lambda: cluster.store.counters().get("delivery_failures", 0) >= 1, 10,
             what="the delivery failure to be counted")


def test_permanent_error_fails_at_once_with_code_and_hint(cluster: Cluster) -> None:
    job_id = cluster.submit({"s3": "permanent"})
    job = cluster.wait(job_id, {"done", "failed"})
    assert job["state"] == "failed" and job["stage"] == "s3"
    assert job["error"]["code"] == "INVALID_FORMAT"
    assert job["error"]["message"] == "series is not a volume (test fault)"
    assert job["error"]["hint"].startswith("The series is not a usable 3-D volume")
    assert job["stages"]["s3"]["attempts"] == 1 and "retry" not in _kinds(cluster, job_id)
    assert "s4" not in job["stages"]
    shown = _cli(cluster, "job", job_id)
    assert shown.returncode == 0 and "INVALID_FORMAT" in shown.stdout and "failed" in shown.stdout


def test_time_limit_gives_timeout(cluster: Cluster) -> None:
    """A pure-Python stage past its limit (s3: 2 s) is interrupted in its thread: TIMEOUT."""
    cpu_pid = cluster.worker_pid("cpu")
    job_id = cluster.submit({"s3": "busy:20"})
    job = cluster.wait(job_id, {"done", "failed"})
    assert job["state"] == "failed" and job["error"]["code"] == "TIMEOUT"
    assert "time limit of 2 s" in job["error"]["message"]
    assert "watchdog" not in _kinds(cluster, job_id)
    assert cluster.worker_pid("cpu") == cpu_pid  # the process survived


def _gone(pid: int) -> bool:
    """The process is dead (or a zombie waiting to be reaped)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_watchdog_kills_stage_stuck_in_native_code(cluster: Cluster) -> None:
    """A C-level call ignores the in-thread limit: the supervisor kills and restarts the worker."""
    cpu_pid = cluster.worker_pid("cpu")
    job_id = cluster.submit({"s3": "stuck:60"})
    job = cluster.wait(job_id, {"done", "failed"})
    assert job["state"] == "failed" and job["error"]["code"] == "TIMEOUT"
    assert "was killed and restarted" in job["error"]["message"]
    assert "watchdog" in _kinds(cluster, job_id)
    # SIGKILL is sent before the job is failed, but a loaded kernel may still be tearing the
    # process (torch's threads and memory) down when the test reads the state: wait for it.
    wait_for(lambda: _gone(cpu_pid), 60, what="the stuck worker process to be gone")
    later = cluster.submit()  # a fresh cpu worker took over
    assert cluster.wait(later, {"done", "failed"})["state"] == "done"
    assert cluster.worker_pid("cpu") != cpu_pid
    # The requeued message of the stuck stage was dropped, not run again.
    assert cluster.store.get(job_id)["state"] == "failed"


def test_cancel_running_and_queued_jobs(cluster: Cluster) -> None:
    running = cluster.submit({"s1": "sleep:20"})
    cluster.wait(running, {"running:s1"})
    out = _cli(cluster, "cancel", running)
    assert out.returncode == 0, out.stderr
    job = cluster.wait(running, {"cancelled"})
    assert _cli(cluster, "cancel", running).returncode == 1  # already ended
    cluster.stop_workers()
    queued = cluster.submit()
    assert _cli(cluster, "cancel", queued).returncode == 0
    cluster.start_workers()
    probe = cluster.submit()
    assert cluster.wait(probe, {"done"})["state"] == "done"
    for job_id in (running, queued):
        job = cluster.store.get(job_id)
        assert job["state"] == "cancelled"
        assert "s2" not in job["stages"] and "cancelled" in _kinds(cluster, job_id)
    lines = trace_lines(Path(cluster.store.get(running)["job_dir"]))
    assert [line[:2] for line in lines] == [["s1", "start"]]  # s1 stopped early, nothing after


def test_retry_from_stage_after_failure(cluster: Cluster) -> None:
    job_id = cluster.submit({"s3": "permanent"})
    job = cluster.wait(job_id, {"failed"})
    summary = Path(job["series_path"]) / "summary.json"
    summary.write_text(summary.read_text().replace('"permanent"', '"ok"'))  # operator fixed it
    out = _cli(cluster, "retry", job_id)
    assert out.returncode == 0 and "from stage 's3'" in out.stdout, out.stdout + out.stderr
    job = cluster.wait(job_id, {"done", "failed"})
    assert job["state"] == "done" and job["run"] == 2 and job["error"] is None
    ends = Counter(line[0] for line in trace_lines(Path(job["job_dir"])) if line[1] == "end")
    assert ends == {"s1": 1, "s2": 1, "s3": 1, "s4": 1}  # s1, s2 not redone
    out = _cli(cluster, "retry", job_id, "--from-stage", "s2")
    assert out.returncode == 0
    job = cluster.wait(job_id, {"done", "failed"})
    assert job["state"] == "done" and job["run"] == 3
    ends = Counter(line[0] for line in trace_lines(Path(job["job_dir"])) if line[1] == "end")
    assert ends == {"s1": 1, "s2": 2, "s3": 2, "s4": 2}
    listed = _cli(cluster, "jobs", "--state", "done")
    assert listed.returncode == 0 and job_id in listed.stdout


def test_cancel_frees_a_gpu_stuck_in_native_code(cluster: Cluster) -> None:
    gpu_pid = cluster.worker_pid("gpu")
    job_id = cluster.submit({"s2": "stuck:60"})
    cluster.wait(job_id, {"running:s2"})
    assert _cli(cluster, "cancel", job_id).returncode == 0
    later = cluster.submit()  # needs the GPU process: only a restart frees it before 60 s
    assert cluster.wait(later, {"done", "failed"})["state"] == "done"
    assert cluster.worker_pid("gpu") != gpu_pid
    job = cluster.store.get(job_id)
    assert job["state"] == "cancelled" and job["stages"]["s2"]["state"] == "cancelled"
    assert "watchdog" in _kinds(cluster, job_id)

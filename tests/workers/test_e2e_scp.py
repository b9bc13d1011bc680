"""End to end: DCMTK storescu -> kneenode serve's SCP -> series completion -> job -> done.

The node runs as one real ``kneenode serve`` process (embedded redis, SCP, workers, HTTP); the
stage chain is the no-fault test chain so the test exercises the job system, not the models.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.support.dcmtk import storescu
from tests.support.mr import mr_series
from tests.support.node import node_env
from tests.workers.conftest import FAST_JOBS, toml_value


def test_storescu_to_scp_to_job_done(tmp_path: Path) -> None:
    data = tmp_path / "data"
    jobs = {k: v for k, v in FAST_JOBS.items() if k != "redis_url"}
    lines = [f"data_dir = {json.dumps(str(data))}", "[scp]", "port = 0", "allow_any = true",
             "[completion]", "quiet_seconds = 1.0", "poll_seconds = 0.2", "[jobs]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in jobs.items()]
    config = tmp_path / "kneenode.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    env = node_env(KNEENODE_CONFIG=str(config))
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "kneenode.cli", "serve"], env=env,
                                stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (data / "serve.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        info = json.loads((data / "serve.json").read_text())
        assert info["scp_port"], info
        files = mr_series(tmp_path / "knee", slices=24)
        localizer = mr_series(tmp_path / "ct", slices=5, modality="CT", description="CT KNEE")
        sent = storescu(info["scp_port"], [*files, *localizer])
        assert sent.returncode == 0, sent.stderr[-2000:]
        base = f"http://127.0.0.1:{info['http_port']}"
        jobs: list[dict] = []
        while time.monotonic() < deadline + 60:
            jobs = httpx.get(f"{base}/jobs").json()["jobs"]
            if len(jobs) == 2 and all(j["state"] in ("done", "ignored", "failed") for j in jobs):
                break
            time.sleep(0.2)
        by_mod = {j["modality"]: j for j in jobs}
        assert by_mod["MR"]["state"] == "done", jobs
        assert by_mod["MR"]["instance_count"] == 24 and by_mod["MR"]["calling_ae"] == "PACS"
        assert by_mod["CT"]["state"] == "ignored" and "modality CT" in by_mod["CT"]["reason"]
        series = Path(by_mod["MR"]["series_path"])
        assert len(list(series.glob("*.dcm"))) == 24 and (series / "summary.json").exists()
        metrics = httpx.get(f"{base}/metrics").text
        assert "kneenode_instances_received_total 29.0" in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert not psutil.pid_exists(info["redis_pid"]) or \
            psutil.Process(info["redis_pid"]).status() == psutil.STATUS_ZOMBIE
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

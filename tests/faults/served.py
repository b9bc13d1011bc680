"""A real ``kneenode serve`` with a DCMTK storescp sink as its delivery destination.

Used by the fault tests: the node runs as one process (embedded redis, SCP, workers); results
are counted as files in the sink (``storescp +uf``: one unique file per received instance, so
an instance delivered twice shows as two files).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.dcmtk import dcmtk_env
from tests.support.node import Node
from tests.support.procs import free_port, port_open, start, stop, wait_for
from workers.broker import make_client
from workers.jobstate import JobStore

FAST = {
    "chain": "tests.faults.gated_chain:gated_chain", "optional_stages": [], "poll_ms": 200,
    "gpu_devices": ["cpu"], "cpu_threads": 2, "io_threads": 2, "retry_min_backoff_s": 0.2,
    "retry_max_backoff_s": 1.0, "shutdown_grace_s": 0.5, "reconcile_interval_s": 1.0,
    "reconcile_grace_s": 3.0,
}


@dataclass
class Sink:
    """DCMTK storescp writing every received instance to its own file."""

    proc: subprocess.Popen
    port: int
    out: Path

    def received(self) -> list[Path]:
        return sorted(p for p in self.out.iterdir() if p.is_file())

    def stop(self) -> None:
        stop(self.proc)


def start_sink(root: Path) -> Sink:
    out = root / "sink"
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = start(["storescp", "-aet", "SINK", "+uf", "-od", str(out), str(port)],
                 log=root / "storescp.log", env=dcmtk_env())
    wait_for(lambda: port_open(port), 20, what="storescp")
    return Sink(proc, port, out)


def serve_config(sink: Sink, **jobs: Any) -> dict[str, Any]:
    """Config of a served node delivering to ``sink`` (fast chain unless ``chain`` is given)."""
    return {
        "scp": {"allow_any": True},
        "completion": {"quiet_seconds": 1.0, "poll_seconds": 0.2},
        "jobs": {**FAST, "http_port": free_port(), **jobs},
        "delivery": {"destinations": [{"ae_title": "SINK", "host": "127.0.0.1",
                                       "port": sink.port}],
                     "backoff_min_s": 0.5, "backoff_max_s": 2.0, "timeout": 10},
    }


def serve_info(node: Node) -> dict[str, Any]:
    return json.loads((node.data_dir / "serve.json").read_text())


def job_store(node: Node) -> JobStore:
    return JobStore(make_client(serve_info(node)["redis_url"], retry_s=30), "kneenode")


def kill_redis(node: Node) -> int:
    """SIGKILL the embedded redis of ``node``; returns the killed PID (serve restarts it)."""
    pid = int(serve_info(node)["redis_pid"])
    os.kill(pid, signal.SIGKILL)
    return pid


def wait_redis_restarted(node: Node, old_pid: int, timeout: float = 60) -> None:
    wait_for(lambda: serve_info(node).get("redis_pid") not in (None, old_pid), timeout,
             what="serve to restart its redis")


def jobs_of(store: JobStore, series_uid: str) -> list[dict[str, Any]]:
    return [j for j in store.list_jobs(limit=1000) if j.get("series_uid") == series_uid]

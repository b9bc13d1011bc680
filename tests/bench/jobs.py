"""Job-system overhead: no-op stages, real redis, real worker processes.

Usage: ``.venv/bin/python tests/bench/jobs.py [--jobs 100] [--poll-ms 50]
[--appendfsync always,everysec]``

Runs the six-stage chain (prepare cpu -> segment gpu -> quantify cpu -> shape gpu -> encode cpu
-> deliver io) with no-op functions, so every millisecond measured is the job system's own:
message round trips through redis, job-store bookkeeping, done-markers. Two runs:

* sequential: one job at a time (latency with idle workers);
* burst: all jobs created at once (queueing included; throughput).

Reported: series completion -> first stage start, and the hop between stages (end of one stage
-> start of the next), median / p95 / max, in ms. Target: <= 50 ms per hop on loopback.
``--appendfsync`` repeats everything once per redis fsync policy (``jobs.redis_appendfsync``), in
the same run, to show what durability costs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from kneenode.settings import load_settings
from tests.workers.conftest import Cluster, write_config
from workers.broker import make_broker, make_client
from workers.intake import JobCreator
from workers.jobstate import JobStore
from workers.redisproc import start_redis
from workers.stages import load_stages
from workers.supervisor import ChildSpec


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s)) - 1))]


def measure(c: Cluster, job_ids: list[str], submitted: dict[str, float]) -> tuple[list, list]:
    """Completion->first start and per-hop latencies (ms) from the jobs' events."""
    first, hops = [], []
    for j in job_ids:
        ev = c.store.events(j)
        starts = [e for e in ev if e["kind"] == "start"]
        ends = [e for e in ev if e["kind"] == "end"]
        first.append(1000 * (starts[0]["t"] - submitted[j]))
        hops += [1000 * (s["t"] - e["t"]) for e, s in zip(ends, starts[1:])]
    return first, hops


def row(name: str, v: list[float]) -> str:
    return (f"| {name:<34} | {len(v):>5} | {statistics.median(v):>8.1f} | {pct(v, 95):>8.1f} "
            f"| {max(v):>8.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--poll-ms", type=int, default=None, help="jobs.poll_ms (default: setting)")
    ap.add_argument("--appendfsync", default="always",
                    help="comma-separated redis fsync policies to compare (always, everysec)")
    a = ap.parse_args()
    for policy in a.appendfsync.split(","):
        run(a, policy.strip())


def run(a: argparse.Namespace, policy: str) -> None:
    """Both measurements against a redis with ``appendfsync <policy>``."""
    root = Path(tempfile.mkdtemp(prefix="kneenode-bench-"))
    redis = start_redis(root / "redis", appendfsync=policy)
    jobs = {"chain": "tests.workers.chains:noop_chain", "redis_url": redis.url,
            "gpu_devices": ["cpu"]}
    if a.poll_ms:
        jobs["poll_ms"] = a.poll_ms
    config = write_config(root / "kneenode.toml", root / "data", jobs)
    os.environ["KNEENODE_CONFIG"] = str(config)
    settings = load_settings()
    store = JobStore(make_client(redis.url), settings.jobs.namespace)
    creator = JobCreator(settings, store, make_broker(redis.url, settings.jobs),
                         load_stages(settings))
    specs = [ChildSpec(("cpu",), settings.jobs.cpu_threads), ChildSpec(("gpu",), 1, "cpu"),
             ChildSpec(("io",), settings.jobs.io_threads)]
    c = Cluster(root, settings, config, redis, store, creator, specs=specs)
    c.start_workers()
    try:
        c.wait(c.submit(), {"done"}, timeout=60)  # warm-up (process start, imports)
        submitted: dict[str, float] = {}
        seq = []
        for _ in range(a.jobs):
            series = c.series()
            t = time.time()
            j = c.creator.create(series)
            submitted[j] = t
            seq.append(j)
            c.wait(j, {"done"}, timeout=60)
        f_seq, h_seq = measure(c, seq, submitted)
        burst, t0 = [], time.time()
        for _ in range(a.jobs):
            series = c.series()
            t = time.time()
            j = c.creator.create(series)
            submitted[j] = t
            burst.append(j)
        for j in burst:
            c.wait(j, {"done"}, timeout=300)
        wall = time.time() - t0
        f_b, h_b = measure(c, burst, submitted)
    finally:
        c.stop_workers()
        redis.stop()
    print(f"\njob system overhead, {a.jobs} jobs x 6 no-op stages, poll_ms="
          f"{settings.jobs.poll_ms}, appendfsync {policy}, {os.cpu_count()} CPUs")
    print("| measure                            |     n | median ms |   p95 ms |   max ms |")
    print("|------------------------------------|-------|----------|----------|----------|")
    print(row("sequential: completion->1st start", f_seq))
    print(row("sequential: hop between stages", h_seq))
    print(row("burst: completion->1st start", f_b))
    print(row("burst: hop between stages", h_b))
    print(f"burst throughput: {a.jobs / wall:.1f} jobs/s ({wall:.1f} s for {a.jobs} jobs)")


if __name__ == "__main__":
    main()

"""Prometheus metrics of the whole node, read from redis at scrape time.

Every process (edge, workers on several hosts) writes its counts to redis; a collector turns them
into Prometheus families when /metrics is scraped, so the numbers are node-wide, not per process.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from kneenode.settings import JobsSettings
from workers.broker import queue_depths
from workers.jobstate import DURATION_BUCKETS, JobStore

_COUNTERS = {
    "instances_received": "DICOM instances received in completed series.",
    "series_completed": "Complete series versions announced by the edge.",
    "delivery_failures": "Jobs whose delivery stage failed for good.",
}


def live_workers(store: JobStore) -> dict[str, int]:
    """Worker processes with a fresh record, per queue."""
    counts = {"cpu": 0, "gpu": 0, "io": 0}
    for worker_id in store.client.smembers(store.key("workers")):
        queues = store.client.hget(store.key("worker", worker_id), "queues")
        if queues is None:
            store.client.srem(store.key("workers"), worker_id)  # record expired: worker gone
            continue
        for q in str(queues).split(","):
            counts[q] = counts.get(q, 0) + 1
    return counts


class JobsCollector(Collector):
    """Collects the node's job metrics from redis on every scrape."""

    def __init__(self, store: JobStore, jobs: JobsSettings) -> None:
        self.store = store
        self.jobs = jobs

    def collect(self) -> Iterator[Metric]:
        counters = self.store.counters()
        for name, doc in _COUNTERS.items():
            c = CounterMetricFamily(f"kneenode_{name}", doc)
            c.add_metric([], counters.get(name, 0))
            yield c
        by_state = GaugeMetricFamily("kneenode_jobs", "Jobs by state.", labels=["state"])
        for state, n in self.store.count_by_state().items():
            by_state.add_metric([state], n)
        yield by_state
        by_route = GaugeMetricFamily(
            "kneenode_route_jobs", "Jobs by state, processing profile and the route that chose it.",
            labels=["state", "profile", "route"])
        for (state, profile, route), n in sorted(self.store.count_by_route().items()):
            by_route.add_metric([state, profile, route], n)
        yield by_route
        depth = GaugeMetricFamily("kneenode_queue_depth", "Messages waiting per queue.",
                                  labels=["queue"])
        for q, n in queue_depths(self.store.client, self.jobs).items():
            depth.add_metric([q], n)
        yield depth
        workers = GaugeMetricFamily("kneenode_workers", "Live worker processes per queue.",
                                    labels=["queue"])
        for q, n in live_workers(self.store).items():
            workers.add_metric([q], n)
        yield workers
        hist = HistogramMetricFamily("kneenode_stage_duration_seconds",
                                     "Duration of successful stage attempts.", labels=["stage"])
        for stage, raw in self.store.stage_histograms().items():
            buckets, total = [], 0.0
            for i, bound in enumerate(DURATION_BUCKETS):
                total += raw.get(f"b{i}", 0.0)
                buckets.append((repr(float(bound)), total))
            buckets.append(("+Inf", raw.get("count", 0.0)))
            hist.add_metric([stage], buckets, raw.get("sum", 0.0))
        yield hist


def render(store: JobStore, jobs: JobsSettings) -> bytes:
    """The Prometheus text exposition: node-wide job metrics from redis, then this process's
    own (the edge's per-C-STORE counters when the SCP runs in this process, e.g. ``serve``)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(store, jobs))
    return generate_latest(registry) + generate_latest(REGISTRY)

"""Prometheus metrics of the DICOM edge, per SCP process (process-wide default registry).

``kneenode serve`` exposes them on /metrics next to the node-wide job metrics from redis.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

INSTANCES_RECEIVED = Counter(
    "kneenode_edge_instances_total",
    "Instances acknowledged with Success, by outcome (stored, duplicate, replaced).",
    ["outcome"],
)
INSTANCES_FAILED = Counter(
    "kneenode_edge_instances_refused_total",
    "Instances answered with a failure status, by reason.",
    ["reason"],
)
ASSOCIATIONS_REJECTED = Counter(
    "kneenode_edge_associations_rejected_total",
    "Associations and connections rejected (A-ASSOCIATE-RJ): access control, caps, malformed.",
)
CONNECTIONS_ABORTED = Counter(
    "kneenode_edge_connections_aborted_total",
    "Connections the edge aborted, by reason (deadline, declared_pdu, malformed, shutdown).",
    ["reason"],
)
SERIES_COMPLETED = Counter(
    "kneenode_edge_series_completed_total", "Series versions completed (by any policy)."
)
LATE_ARRIVALS = Counter(
    "kneenode_edge_late_versions_total", "Series versions formed by instances after completion."
)
SERIES_CLOSED = Counter(
    "kneenode_edge_series_closed_total",
    "Series versions completed, by how: release+count, release+geometry or timer.",
    ["closed_by"],
)
COMPLETION_WAIT = Histogram(
    "kneenode_edge_completion_wait_seconds",
    "Last instance received -> series complete, by how the series was closed.",
    ["closed_by"],
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300),
)
EARLY_CLOSE_OVERRUNS = Counter(
    "kneenode_edge_early_close_overruns_total",
    "Series closed early on a release that then received more instances (a new version), "
    "by how the early close was made.",
    ["closed_by"],
)
EARLY_CLOSE_OVERRUN_INSTANCES = Counter(
    "kneenode_edge_early_close_overrun_instances_total",
    "Instances that arrived after an early close, by how the early close was made.",
    ["closed_by"],
)

"""Prometheus metrics of the DICOM edge, per SCP process (process-wide default registry).

``kneenode serve`` exposes them on /metrics next to the node-wide job metrics from redis.
"""

from __future__ import annotations

from prometheus_client import Counter

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
    "kneenode_edge_series_completed_total", "Series versions completed after their quiet period."
)
LATE_ARRIVALS = Counter(
    "kneenode_edge_late_versions_total", "Series versions formed by instances after completion."
)

"""Prometheus metrics of the DICOM edge (exposed by the node's /metrics endpoint)."""

from __future__ import annotations

from prometheus_client import Counter

INSTANCES_RECEIVED = Counter(
    "kneenode_instances_received_total",
    "Instances acknowledged with Success, by outcome (stored, duplicate, replaced).",
    ["outcome"],
)
INSTANCES_FAILED = Counter(
    "kneenode_instances_refused_total",
    "Instances answered with a failure status, by reason.",
    ["reason"],
)
ASSOCIATIONS_REJECTED = Counter(
    "kneenode_associations_rejected_total", "Associations rejected by access control."
)
SERIES_COMPLETED = Counter(
    "kneenode_series_completed_total", "Series versions completed after their quiet period."
)
LATE_ARRIVALS = Counter(
    "kneenode_series_late_versions_total", "Series versions formed by instances after completion."
)

"""The node's health document (``GET /health`` and the console's front page)."""

from __future__ import annotations

import shutil
from typing import Any

import redis

from kneenode.settings import Settings
from scp.edgehealth import spool_health
from workers.jobstate import JobStore
from workers.metrics import live_workers


def health(store: JobStore, settings: Settings) -> tuple[int, dict[str, Any]]:
    """The health document and its HTTP status."""
    usage = shutil.disk_usage(settings.data_dir if settings.data_dir.exists() else ".")
    doc: dict[str, Any] = {
        "disk": {"path": str(settings.data_dir), "free_bytes": usage.free,
                 "free_percent": round(100 * usage.free / usage.total, 2)},
    }
    try:
        store.client.ping()
        doc["redis"] = "ok"
        doc["workers"] = live_workers(store)
    except redis.RedisError as exc:
        doc["redis"] = f"error: {exc}"
        doc["workers"] = {}
        doc["status"] = "down"
        return 503, doc
    missing = [q for q, n in doc["workers"].items() if n == 0]
    doc["spool"] = spool_health(settings)
    degraded = bool(missing) or doc["spool"]["status"] != "ok"
    doc["status"] = "degraded" if degraded else "ok"
    if missing:
        doc["queues_without_workers"] = missing
    return (503 if degraded else 200), doc

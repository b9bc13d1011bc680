"""Disk retention: remove finished jobs' spool and job folders, never anything undelivered.

Rules (``retention`` settings):

* ``done`` (delivered), ``ignored`` and ``cancelled`` jobs are removed ``days`` after their last
  update: the job folder and the series version folder in the spool.
* ``failed`` jobs are kept until retried or removed on purpose (``kneenode purge``).
* Queued, running and retrying jobs are never touched.
* Emergency: when free space falls under ``emergency_free_bytes`` / ``emergency_free_percent``,
  finished jobs are removed before their time, oldest first (done, then ignored, then cancelled),
  until there is room again.

The job record stays in the store (with ``purged`` set and a ``purged`` event) as the history.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kneenode.logs import get_logger
from kneenode.settings import RetentionSettings, Settings
from workers.jobstate import JobStore
from workers.periodic import Periodic

log = get_logger(__name__)

AUTOMATIC = ("done", "ignored", "cancelled")  # emergency order, too
DAY = 86400.0


@dataclass(frozen=True)
class PurgeItem:
    """One job whose folders are to be removed, and why."""

    job_id: str
    state: str
    paths: tuple[Path, ...]
    reason: str


def _paths(job: dict[str, Any]) -> tuple[Path, ...]:
    found = [Path(job[k]) for k in ("job_dir", "series_path") if job.get(k)]
    return tuple(p for p in found if p.exists())


def plan_expired(jobs: Iterable[dict[str, Any]], now: float, policy: RetentionSettings
                 ) -> list[PurgeItem]:
    """Finished jobs older than ``policy.days`` (pure: decides, removes nothing)."""
    out = []
    for job in jobs:
        if job.get("state") in AUTOMATIC and not job.get("purged"):
            age = now - _number(job.get("updated") or job.get("created"), now)
            if age >= policy.days * DAY and _paths(job):
                out.append(PurgeItem(job["id"], job["state"], _paths(job),
                                     f"{job['state']} {age / DAY:.1f} days ago"))
    return out


def _number(value: Any, default: float) -> float:
    """A record's time field; a damaged one counts as ``default`` instead of stopping the pass."""
    try:
        return float(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def plan_emergency(jobs: Iterable[dict[str, Any]]) -> list[PurgeItem]:
    """Every finished job with folders left, in emergency order (pure)."""
    rank = {state: i for i, state in enumerate(AUTOMATIC)}
    candidates = [j for j in jobs if j.get("state") in rank and not j.get("purged") and _paths(j)]
    candidates.sort(key=lambda j: (rank[j["state"]], _number(j.get("updated"), 0.0)))
    return [PurgeItem(j["id"], j["state"], _paths(j), "emergency: disk low") for j in candidates]


def plan_manual(jobs: Iterable[dict[str, Any]], *, job_ids: set[str], states: set[str],
                older_than_days: float, now: float) -> list[PurgeItem]:
    """What ``kneenode purge`` removes: named jobs or jobs in ``states``, finished ones only."""
    out = []
    for job in jobs:
        state = str(job.get("state", ""))
        if state not in ("failed", *AUTOMATIC) or job.get("purged"):
            continue
        age = now - _number(job.get("updated"), now)
        wanted = job["id"] in job_ids or (state in states and age >= older_than_days * DAY)
        if wanted and _paths(job):
            out.append(PurgeItem(job["id"], state, _paths(job), "purge requested"))
    return out


def disk_low(path: Path, policy: RetentionSettings) -> bool:
    """Whether free space on ``path``'s filesystem is under the emergency thresholds."""
    usage = shutil.disk_usage(path)
    return (usage.free < policy.emergency_free_bytes
            or usage.free * 100.0 < policy.emergency_free_percent * usage.total)


def apply(store: JobStore, items: Iterable[PurgeItem],
          stop_when: Callable[[], bool] | None = None) -> list[PurgeItem]:
    """Remove the folders and mark the records; stop early when ``stop_when()`` turns true."""
    done = []
    for item in items:
        if stop_when is not None and stop_when():
            break
        try:
            if _purge(store, item):
                done.append(item)
        except Exception:  # one job's failure (a damaged record, redis hiccup) skips that job
            log.exception("removing a job's folders failed; other jobs continue",
                          job_id=item.job_id)
    return done


def _purge(store: JobStore, item: PurgeItem) -> bool:
    job = store.get(item.job_id) or {}
    if job.get("state") != item.state:  # changed meanwhile (e.g. retried): leave it
        return False
    for path in item.paths:
        shutil.rmtree(path, ignore_errors=True)
    store.update(item.job_id, purged=time.time())
    store.event(item.job_id, "purged", reason=item.reason, paths=[str(p) for p in item.paths])
    log.info("job folders removed", job_id=item.job_id, state=item.state, reason=item.reason)
    return True


def all_jobs(store: JobStore) -> list[dict[str, Any]]:
    """Every job record (retention looks at all of them, not a page)."""
    return store.list_jobs(limit=10**9)


def run_retention(settings: Settings, store: JobStore, now: float | None = None
                  ) -> list[PurgeItem]:
    """One pass of the automatic policy: expired jobs, then the emergency order if disk is low."""
    now = time.time() if now is None else now
    policy = settings.retention
    jobs = all_jobs(store)
    removed = apply(store, plan_expired(jobs, now, policy))
    data = settings.data_dir
    if disk_low(data, policy):
        log.warning("disk low: removing finished jobs before their time", data_dir=str(data))
        removed += apply(store, plan_emergency(all_jobs(store)),
                         stop_when=lambda: not disk_low(data, policy))
    return removed


class RetentionLoop(Periodic):
    """Applies :func:`run_retention` every ``retention.interval_s`` in a daemon thread."""

    def __init__(self, settings: Settings, store: JobStore) -> None:
        def retention() -> None:
            run_retention(settings, store)

        super().__init__("retention", settings.retention.interval_s, [retention], at_start=False)

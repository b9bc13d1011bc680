"""Reconciliation: find live jobs whose stage message is gone, and send it again.

A job in ``queued``, ``running:<stage>`` or ``retry_wait`` always has exactly one way forward: a
message for its stage (ready, delayed, or fetched and not yet acknowledged, all of which stay in
dramatiq's ``<queue>.msgs`` / ``<queue>.DQ.msgs`` hashes) or a live worker running that stage
(its record's ``task:*`` fields). A crash or a redis restart at the wrong moment can leave neither:
the stage committed but its next message was never sent, or a worker died with nothing to
requeue. :func:`reconcile_jobs` finds those jobs and re-sends their stage; the stage's done-marker
makes a committed stage only chain on, and the delivery outbox makes a re-sent delivery send only
what is still pending.

Only jobs whose record has not changed for ``jobs.reconcile_grace_s`` are looked at, and each is
read again just before its message is re-sent, so a job moving between two stages is left alone.
One pass holds a short redis lock, so several hosts sharing an external redis do not re-send the
same job twice. ``kneenode serve`` and ``kneenode scp`` (with jobs) run it at start and every
``jobs.reconcile_interval_s``; ``kneenode retry`` of a live job runs it for that job.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dramatiq.broker import Broker

from kneenode.logs import get_logger
from kneenode.settings import Settings
from workers.broker import QUEUES, mq_namespace
from workers.dispatch import enqueue_stage
from workers.jobconfig import job_settings
from workers.jobstate import JobStore, now
from workers.periodic import Periodic

log = get_logger(__name__)

LIVE = ("queued", "running", "retry_wait")
StageKey = tuple[str, str, int]  # job id, stage, run


@dataclass(frozen=True)
class Stranded:
    """A live job with no message and no worker for its stage."""

    job_id: str
    stage: str
    run: int
    state: str
    updated: float


def pending_messages(store: JobStore, namespace: str) -> set[StageKey]:
    """(job, stage, run) of every stage message redis holds: ready, delayed or unacknowledged."""
    pipe = store.client.pipeline(transaction=False)
    for q in QUEUES:
        pipe.hvals(f"{namespace}:{q}.msgs")
        pipe.hvals(f"{namespace}:{q}.DQ.msgs")
    found: set[StageKey] = set()
    for values in pipe.execute():
        for raw in values:
            try:
                job_id, stage, run = json.loads(raw)["args"][:3]
                found.add((str(job_id), str(stage), int(run)))
            except (ValueError, KeyError, TypeError):
                continue  # not a stage message
    return found


def held_by_workers(store: JobStore) -> set[StageKey]:
    """(job, stage, run) of every stage a live worker process says it is running."""
    held: set[StageKey] = set()
    for worker_id in store.client.smembers(store.key("workers")):
        for field, value in store.client.hgetall(store.key("worker", worker_id)).items():
            if field.startswith("task:"):
                try:
                    task = json.loads(value)
                    held.add((str(task["job_id"]), str(task["stage"]), int(task["run"])))
                except (ValueError, KeyError, TypeError):
                    continue
    return held


def _live(job: dict[str, Any]) -> bool:
    return str(job.get("state", "")).split(":")[0] in LIVE and bool(job.get("stage"))


def find_stranded(store: JobStore, namespace: str, *, grace_s: float, at: float | None = None,
                  job_ids: Iterable[str] | None = None) -> list[Stranded]:
    """Live jobs unchanged for ``grace_s`` with no message and no worker for their stage."""
    at = now() if at is None else at
    if job_ids is None:
        jobs = store.list_jobs(limit=10**9)
    else:
        jobs = [j for j in (store.get(i) for i in job_ids) if j is not None]
    candidates = [j for j in jobs if _live(j) and at - float(j.get("updated") or 0) >= grace_s]
    if not candidates:
        return []
    known = pending_messages(store, namespace) | held_by_workers(store)
    return [Stranded(j["id"], j["stage"], int(j["run"]), j["state"], float(j["updated"]))
            for j in candidates if (j["id"], j["stage"], int(j["run"])) not in known]


def resend(store: JobStore, broker: Broker, settings: Settings, queues: Mapping[str, str],
           item: Stranded) -> bool:
    """Send ``item``'s stage again, if the job is exactly as it was found; True when sent."""
    job = store.get(item.job_id)
    if job is None or (job["state"], job["stage"], int(job["run"]), float(job["updated"])) != (
            item.state, item.stage, item.run, item.updated):
        return False  # it moved meanwhile: not stranded
    config = job.get("config")
    if isinstance(config, dict):  # the job's own chain (its snapshot) names the queue
        queue = {s["name"]: s["queue"] for s in config.get("chain", [])}.get(item.stage)
    else:
        queue = queues.get(item.stage)
    if queue is None:
        log.error("stranded job's stage is not in this node's chain", job_id=item.job_id,
                  stage=item.stage)
        return False
    # The lease of a message that no longer exists would make the new copy a "duplicate".
    store.client.delete(store.key("lease", item.job_id, item.stage))
    if not store.transition(item.job_id, item.run, state="queued", stage=item.stage):
        return False
    store.event(item.job_id, "reconciled", stage=item.stage, was=item.state,
                reason="no message and no worker for the stage")
    jobs = job_settings(settings, config).jobs  # the job's own limits and retries
    enqueue_stage(broker, jobs, job_id=item.job_id, stage=item.stage, queue=queue,
                  run=item.run, rerun=job.get("rerun_stage") == item.stage)
    log.warning("stranded job re-sent", job_id=item.job_id, stage=item.stage, was=item.state)
    return True


def reconcile_jobs(store: JobStore, broker: Broker, settings: Settings, queues: Mapping[str, str],
                   *, job_ids: Iterable[str] | None = None, grace_s: float | None = None
                   ) -> list[Stranded]:
    """One pass: re-send every stranded job (each in isolation). Returns those re-sent."""
    jobs = settings.jobs
    lock = store.key("reconcile", "lock")
    token = uuid.uuid4().hex
    if not store.client.set(lock, token, nx=True, px=int(max(5.0, jobs.reconcile_interval_s) * 1000)):
        return []  # another host's pass is running
    sent = []
    try:
        grace = jobs.reconcile_grace_s if grace_s is None else grace_s
        for item in find_stranded(store, mq_namespace(jobs), grace_s=grace, job_ids=job_ids):
            try:
                if resend(store, broker, settings, queues, item):
                    sent.append(item)
            except Exception:  # one job's failure must not stop the others
                log.exception("re-sending a stranded job failed", job_id=item.job_id)
    finally:
        if store.client.get(lock) == token:
            store.client.delete(lock)
    return sent


class ReconcileLoop(Periodic):
    """Runs reconciliation passes at start and every ``jobs.reconcile_interval_s`` (a thread)."""

    def __init__(self, settings: Settings, passes: list[Callable[[], object]]) -> None:
        super().__init__("reconcile", settings.jobs.reconcile_interval_s, passes, at_start=True)


def job_reconciler(settings: Settings, store: JobStore, broker: Broker,
                   queues: Mapping[str, str]) -> Callable[[], list[Stranded]]:
    """The job pass for :class:`ReconcileLoop` (bound to one store and broker)."""

    def run() -> list[Stranded]:
        return reconcile_jobs(store, broker, settings, queues)

    run.__name__ = "reconcile_jobs"
    return run


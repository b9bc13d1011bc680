"""From a complete series to a job: the ``on_complete`` function the edge calls.

Idempotent per (series_uid, version): the edge may announce a version again after a crash, and
gets the same job back. Each version gets a new job linked to the series' earlier job. Series that
fail selection become ``ignored`` jobs carrying the reason, so operators can see every series.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dramatiq.brokers.redis import RedisBroker

from kneenode.logs import get_logger
from kneenode.settings import Settings
from scp.announce import CompletedSeries, OnComplete
from workers.actors import enqueue_stage
from workers.jobstate import JobStore
from workers.selection import rules_for, select
from workers.stages import Stage

log = get_logger(__name__)


@dataclass(frozen=True)
class JobCreator:
    """Creates (or finds) the job of each complete series version and sends its first stage."""

    settings: Settings
    store: JobStore
    broker: RedisBroker
    chain: list[Stage]

    def __call__(self, series: CompletedSeries) -> None:
        self.create(series)

    def create(self, series: CompletedSeries) -> str:
        """Create the job of ``series``; return its id (the existing one when announced again)."""
        s = series.summary
        fields: dict[str, Any] = {
            "study_uid": series.study_uid,
            "series_path": str(series.path),
            "calling_ae": series.calling_ae,
            "modality": str(s.get("modality") or ""),
            "series_description": str(s.get("series_description") or ""),
            "instance_count": int(s.get("instance_count") or 0),
            "closed_by": str(s.get("closed_by") or ""),
            "completion_wait_s": s.get("completion_wait_seconds") or 0.0,
            "chain": [st.name for st in self.chain],
        }
        job_id, created = self.store.create(series.series_uid, series.version, fields)
        bound = log.bind(job_id=job_id, series_uid=series.series_uid, version=series.version)
        job = self.store.get(job_id) or {}
        if not created and (job.get("state") not in ("created", "queued")
                            or job.get("dispatched") == "1"):
            bound.info("series version already has a job")
            return job_id
        job_dir = self.settings.data_dir / "jobs" / job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        if created:
            self.store.incr("series_completed")
            self.store.incr("instances_received", int(fields["instance_count"]))
            self._record_early_close(job_id, job, s)
        decision = select(s, rules_for(self.settings.jobs.selection, series.calling_ae), series.path)
        if not decision.selected:
            self.store.update(job_id, job_dir=str(job_dir))
            self.store.ignore(job_id, str(decision.code), decision.reason)
            bound.info("series ignored", reason=decision.reason)
            return job_id
        first = self.chain[0]
        self.store.update(job_id, job_dir=str(job_dir), stage=first.name)
        self.store.event(job_id, "selected")
        # State first, then the message (a fast worker must not see 'created' after starting);
        # 'dispatched' marks the send, so a re-announce after a crash in between sends again.
        self.store.transition(job_id, int(job.get("run", 1)), state="queued")
        enqueue_stage(self.broker, self.settings.jobs, job_id=job_id, stage=first.name,
                      queue=first.queue, run=int(job.get("run", 1)))
        self.store.update(job_id, dispatched=1)
        self.store.event(job_id, "queued", stage=first.name)
        bound.info("job queued", stage=first.name)
        return job_id

    def _record_early_close(self, job_id: str, job: dict[str, Any], summary: dict[str, Any]) -> None:
        """A version that followed an early close says so, on its job and on the earlier one."""
        for e in summary.get("events") or []:
            if e.get("event") != "after_early_close":
                continue
            self.store.event(job_id, "after_early_close", message=e.get("message"),
                             more_instances=e.get("more_instances"))
            previous = str(job.get("previous_job") or "")
            if previous:
                self.store.event(previous, "early_close_overrun", message=e.get("message"),
                                 next_job=job_id)
                self.store.update(previous, more_after_close=int(e.get("more_instances") or 0))


def make_on_complete(settings: Settings, store: JobStore, broker: RedisBroker,
                     chain: list[Stage]) -> OnComplete:
    """The function ``kneenode serve`` hands to the edge's completion monitor."""
    return JobCreator(settings, store, broker, chain)

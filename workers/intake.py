"""From a complete series to a job: the ``on_complete`` function the edge calls.

Idempotent per (series_uid, version): the edge may announce a version again after a crash, and
gets the same job back. Each version gets a new job linked to the series' earlier job. The series
is routed (:mod:`scp.routing`, first match wins) to a profile (an uploaded series: the uploader's
choice, :mod:`workers.upload`); the job stores which rule matched and why, and a snapshot of its
configuration (:mod:`workers.jobconfig`) that every stage, retry and redelivery runs from. Series
that a route ignores or that fail selection become ``ignored`` jobs carrying the rule and the
reason, so operators can see every series.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dramatiq.brokers.redis import RedisBroker

from kneenode.errors import ErrorCode, NodeError
from kneenode.fsio import write_json_atomic
from kneenode.logs import get_logger
from kneenode.settings import PriorsSettings, Settings
from scp.announce import CompletedSeries, OnComplete
from scp.routing import RouteMatch, match_series
from workers.dispatch import enqueue_lookup, enqueue_stage
from workers.jobconfig import JobConfig, build_config, job_settings
from workers.jobstate import JobStore
from workers.priorjobs import note_prior_created, note_prior_end, prior_config
from workers.priors import PendingRetrievals, lookup_rules, lookup_time_limit_s
from workers.selection import rules_for, select
from workers.stages import Stage

log = get_logger(__name__)
CONFIG_FILE = "config.json"


def job_fields(summary: Mapping[str, Any], match: RouteMatch) -> dict[str, Any]:
    """The record fields a job takes from its series summary and its route."""
    upload = summary.get("upload") or {}
    return {
        "source": "upload" if upload else "dicom",
        "user": str(upload.get("user") or ""),
        "calling_ae": str(summary.get("calling_ae") or ""),
        "called_ae": str(summary.get("called_ae") or ""),
        "address": str(summary.get("address") or ""),
        "modality": str(summary.get("modality") or ""),
        "series_description": str(summary.get("series_description") or ""),
        "instance_count": int(summary.get("instance_count") or 0),
        "closed_by": str(summary.get("closed_by") or ""),
        "completion_wait_s": summary.get("completion_wait_seconds") or 0.0,
        "route": match.name,
        "route_reason": match.reason,
        "profile": (upload.get("profile") or match.target.profile)
        if match.target.action == "process" else "",
        "chain": [],
    }


def dispatch(settings: Settings, store: JobStore, broker: RedisBroker, job_id: str,
             job_dir: Path, config: JobConfig, run: int = 1) -> None:
    """Store the job's snapshot (record + ``config.json``) and send its first stage."""
    write_json_atomic(job_dir / CONFIG_FILE, config.model_dump(mode="json"))
    first = config.chain[0]
    store.update(job_id, job_dir=str(job_dir), stage=first.name, profile=config.profile,
                 chain=config.stage_names, config=config.model_dump(mode="json"))
    store.event(job_id, "selected", route=config.route, profile=config.profile)
    # State first, then the message (a fast worker must not see 'created' after starting);
    # 'dispatched' marks the send, so a re-announce after a crash in between sends again.
    store.transition(job_id, run, state="queued")
    enqueue_stage(broker, job_settings(settings, config).jobs, job_id=job_id, stage=first.name,
                  queue=first.queue, run=run)
    store.update(job_id, dispatched=1)
    store.event(job_id, "queued", stage=first.name)
    if config.priors is not None:  # in parallel with the chain (docs/priors.md)
        limit = lookup_time_limit_s(PriorsSettings.model_validate(config.priors))
        enqueue_lookup(broker, job_id=job_id, time_limit_s=limit)
        store.event(job_id, "priors_requested", pacs=config.priors["pacs"]["ae_title"])


@dataclass(frozen=True)
class JobCreator:
    """Creates (or finds) the job of each complete series version and sends its first stage.

    ``chain`` is every stage the node declares (:func:`workers.stages.load_stages`); each job
    runs the part its profile enables.
    """

    settings: Settings
    store: JobStore
    broker: RedisBroker
    chain: Sequence[Stage]

    def __call__(self, series: CompletedSeries) -> str:
        return self.create(series)

    def missing(self, keys: list[tuple[str, int]]) -> set[tuple[str, int]]:
        """Of ``(series_uid, version)`` handed off earlier, those without a usable job record.

        A record is missing when its claim or hash is gone (a redis that lost writes), or when it
        never left ``created`` (the hand-off stopped before the first message was sent).
        """
        out: set[tuple[str, int]] = set()
        client = self.store.client
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            pipe = client.pipeline(transaction=False)
            for uid, version in chunk:
                pipe.get(self.store.key("key", uid, str(version)))
            claims = pipe.execute()
            pipe = client.pipeline(transaction=False)
            for claim in claims:
                pipe.hmget(self.store.key("job", str(claim)), "state", "dispatched")
            for key, claim, (state, dispatched) in zip(chunk, claims, pipe.execute(), strict=True):
                if claim is None or state is None or (state == "created" and dispatched != "1"):
                    out.add(key)
        return out

    def create(self, series: CompletedSeries) -> str:
        """Create the job of ``series``; return its id (the existing one when announced again)."""
        s = series.summary
        match = match_series(self.settings, s)
        fields = {"study_uid": series.study_uid, "series_path": str(series.path),
                  **job_fields(s, match)}
        current = self._prior_of(series.series_uid)
        if current is not None:  # a series the priors lookup asked for (workers.priors)
            fields.update(route=current["route"], route_reason=f"prior of job {current['id']}",
                          profile=current.get("profile", ""), prior_of=current["id"])
        job_id, created = self.store.create(series.series_uid, series.version, fields)
        bound = log.bind(job_id=job_id, series_uid=series.series_uid, version=series.version,
                         route=match.name)
        job = self.store.get(job_id) or {}
        if not created and (job.get("state") not in ("created", "queued")
                            or job.get("dispatched") == "1"):
            bound.info("series version already has a job")
            return job_id
        job_dir = self.settings.data_dir / "jobs" / job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        upload = s.get("upload") or {}
        if created and upload:
            self.store.event(job_id, "uploaded", user=upload.get("user", ""),
                             profile=upload.get("profile", ""), format=upload.get("kind", ""),
                             files=upload.get("files", []))
        if created:
            self.store.incr("series_completed")
            self.store.incr("instances_received", int(fields["instance_count"]))
            self._record_early_close(job_id, job, s)
        if current is not None:
            return self._create_prior(job_id, job_dir, series, current, bound)
        if match.target.action == "ignore":
            self.store.update(job_id, job_dir=str(job_dir))
            self.store.ignore(job_id, str(ErrorCode.NOT_SELECTED),
                              f"route '{match.name}' ignores this series ({match.reason})")
            bound.info("series ignored by its route", reason=match.reason)
            return job_id
        decision = select(s, rules_for(self.settings.jobs.selection, match.target), series.path)
        if not decision.selected:
            self.store.update(job_id, job_dir=str(job_dir))
            self.store.ignore(job_id, str(decision.code), decision.reason)
            bound.info("series ignored", reason=decision.reason)
            return job_id
        try:
            # an upload's chosen profile wins over its route's, as `reprocess --profile` does
            config = build_config(self.settings, self.chain, match,
                                  profile=upload.get("profile") or None)
        except NodeError as exc:  # e.g. a model folder removed after startup
            self.store.update(job_id, job_dir=str(job_dir))
            self.store.fail(job_id, "", exc.as_dict())
            bound.error("job configuration failed", error=exc.message)
            return job_id
        dispatch(self.settings, self.store, self.broker, job_id, job_dir, config,
                 int(job.get("run", 1)))
        bound.info("job queued", stage=config.chain[0].name, profile=config.profile)
        return job_id

    def _prior_of(self, series_uid: str) -> dict[str, Any] | None:
        """The live current job that asked the PACS for this series, if any."""
        pending = PendingRetrievals(self.store).get(series_uid)
        current = self.store.get(str(pending["job_id"])) if pending else None
        if current is None or not current.get("config"):
            return None
        return current

    def _create_prior(self, job_id: str, job_dir: Path, series: CompletedSeries,
                      current: dict[str, Any], bound: Any) -> str:
        """A prior job: the current job's snapshot (same profile and model), measured and
        recorded only; selection with the current route's rules."""
        config = JobConfig.model_validate(current["config"])
        current_dir = Path(current["job_dir"])
        note_prior_created(current_dir, series.series_uid, job_id, job_dir, series.study_uid)
        self.store.event(current["id"], "prior_received", prior_job=job_id,
                         series_uid=series.series_uid)
        decision = select(series.summary, lookup_rules(self.settings, config.route), series.path)
        if not decision.selected:
            self.store.update(job_id, job_dir=str(job_dir))
            self.store.ignore(job_id, str(decision.code), decision.reason)
            note_prior_end(job_dir, "ignored", {"code": str(decision.code),
                                                "message": decision.reason})
            bound.info("prior series ignored", reason=decision.reason)
            return job_id
        prior = prior_config(config, current["id"])
        dispatch(self.settings, self.store, self.broker, job_id, job_dir, prior,
                 int((self.store.get(job_id) or {}).get("run", 1)))
        bound.info("prior job queued", prior_of=current["id"], profile=prior.profile)
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
                     chain: Sequence[Stage]) -> OnComplete:
    """The function ``kneenode serve`` hands to the edge's completion monitor."""
    return JobCreator(settings, store, broker, chain)

"""What an operator may do to a job: retry, reprocess, cancel, resend, release, discard.

One implementation for the CLI (``kneenode retry`` ...) and the web console: each function takes
the store, the broker and plain values, records the action in the job's events with the user's
name, and returns an :class:`Outcome`, or raises :class:`ActionError` (a :class:`NodeError` with
the HTTP status the console answers; the CLI prints its message).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dramatiq.brokers.redis import RedisBroker

from kneenode.errors import ErrorCode, NodeError
from kneenode.profiles import parse_sets
from kneenode.settings import Settings
from scp.delivery import destinations_of, reset_destination
from scp.routing import match_series
from workers.dispatch import enqueue_stage
from workers.intake import dispatch, job_fields
from workers.jobconfig import build_config, job_settings, startup_stages
from workers.jobstate import TERMINAL, JobStore
from workers.review import discard as review_discard
from workers.review import release as review_release
from workers.stages import load_chain


class ActionError(NodeError):
    """An action refused: ``status`` is what the console answers (404 no job, 409 the job's
    state does not allow it, 400 a bad value the user gave)."""

    def __init__(self, code: ErrorCode, message: str, *, status: int = 409,
                 hint: str | None = None) -> None:
        super().__init__(code, message, hint=hint if hint is not None else "")
        self.status = status


@dataclass(frozen=True)
class Outcome:
    """What an action did, in one sentence, and the job it concerns (a new one for reprocess)."""

    job_id: str
    message: str


def find_job(store: JobStore, given: str) -> dict[str, Any]:
    """The record of the job with this full ID or unique start/end of one (a short ID)."""
    found = store.match_ids(given)
    if not found:
        raise ActionError(ErrorCode.FILE_NOT_FOUND, f"no job {given}", status=404)
    if len(found) > 1:
        raise ActionError(ErrorCode.CONFIG_ERROR, f"{len(found)} jobs match '{given}' "
                          f"({', '.join(found[:4])}...): give more of the ID", status=400)
    job = store.get(found[0])
    if job is None:
        raise ActionError(ErrorCode.FILE_NOT_FOUND, f"no job {found[0]}", status=404)
    return job


def stage_queues(settings: Settings, job: dict[str, Any]) -> dict[str, str]:
    """Stage name -> queue from the job's own snapshot (the node's chain for older jobs)."""
    config = job.get("config")
    if isinstance(config, dict):
        return {s["name"]: s["queue"] for s in config["chain"]}
    return {s.name: s.queue for s in load_chain(settings)}  # jobs from before snapshots


def _enqueue(settings: Settings, broker: RedisBroker, job: dict[str, Any], stage: str, run: int,
             *, rerun: bool) -> None:
    queues = stage_queues(settings, job)
    jobs = job_settings(settings, job.get("config")).jobs  # the job's own limits and retries
    enqueue_stage(broker, jobs, job_id=job["id"], stage=stage, queue=queues[stage], run=run,
                  rerun=rerun)


def retry(settings: Settings, store: JobStore, broker: RedisBroker, given: str, *,
          from_stage: str | None = None, user: str = "") -> Outcome:
    """Run an ended job again from a stage (default: the failed one, else the first).

    A live job whose stage message was lost is re-sent as it is; one still on its way is refused.
    """
    job = find_job(store, given)
    job_id = job["id"]
    if job["state"].split(":")[0] not in TERMINAL:
        return _resend_if_stranded(settings, store, broker, job, user)
    if job["state"] == "ignored":
        raise ActionError(ErrorCode.NOT_SELECTED, f"job {job_id} is ignored "
                          f"({job.get('reason', '')}): send the series again")
    if job.get("purged"):
        raise ActionError(ErrorCode.FILE_NOT_FOUND,
                          f"job {job_id}'s folders were removed (purged): send the series again")
    queues = stage_queues(settings, job)
    chain: list[str] = job.get("chain") or []
    stage = from_stage or (job.get("stage") if job["state"] == "failed" else None) or chain[0]
    if stage not in chain or stage not in queues:
        raise ActionError(ErrorCode.CONFIG_ERROR,
                          f"unknown stage '{stage}' (stages: {', '.join(chain)})", status=400)
    run = store.restart(job_id, stage, user=user)
    _enqueue(settings, broker, job, stage, run, rerun=True)
    return Outcome(job_id, f"job {job_id} queued again from stage '{stage}' (run {run}, profile "
                           f"'{job.get('profile') or 'default'}' as configured when it was created)")


def _resend_if_stranded(settings: Settings, store: JobStore, broker: RedisBroker,
                        job: dict[str, Any], user: str) -> Outcome:
    from workers.reconcile import reconcile_jobs

    queues = {s.name: s.queue for s in startup_stages(settings)}
    sent = reconcile_jobs(store, broker, settings, queues, job_ids=[job["id"]], grace_s=0)
    if not sent:
        raise ActionError(ErrorCode.CONFIG_ERROR, f"job {job['id']} is {job['state']} and its "
                          f"stage '{job.get('stage')}' is queued or running: nothing to retry "
                          "(cancel it first to start over)")
    store.event(job["id"], "retry", stage=job["stage"], user=user, resent=True)
    return Outcome(job["id"], f"job {job['id']} had no message for stage '{job['stage']}': "
                              "sent again")


def reprocess(settings: Settings, store: JobStore, broker: RedisBroker, given: str, *,
              profile: str | None = None, sets: Sequence[str] = (), user: str = "") -> Outcome:
    """A new job, linked to ``given``, from the same spooled series with today's profile."""
    job = find_job(store, given)
    job_id = job["id"]
    series_path = Path(str(job.get("series_path", "")))
    if job.get("purged") or not (series_path / "summary.json").is_file():
        raise ActionError(ErrorCode.FILE_NOT_FOUND, f"job {job_id}'s spooled series is gone "
                          f"({series_path}): send the series again")
    try:
        overrides = parse_sets(list(sets))
        stages = startup_stages(settings)
        summary = json.loads((series_path / "summary.json").read_text(encoding="utf-8"))
        match = match_series(settings, summary)
        name = profile or job.get("profile") or match.target.profile
        config = build_config(settings, stages, match, profile=name, sets=overrides,
                              reprocess_of=job_id)
    except ValueError as exc:
        raise ActionError(ErrorCode.CONFIG_ERROR, str(exc), status=400) from None
    except OSError as exc:
        raise ActionError(ErrorCode.FILE_NOT_FOUND, f"cannot read the series summary: {exc}") from None
    except NodeError as exc:
        raise ActionError(exc.code, exc.message, status=400, hint=exc.hint) from None
    new_id = store.create_linked(job, {**job_fields(summary, match), "profile": config.profile},
                                 user=user)
    job_dir = settings.data_dir / "jobs" / new_id
    job_dir.mkdir(parents=True, exist_ok=True)
    dispatch(settings, store, broker, new_id, job_dir, config)
    return Outcome(new_id, f"job {new_id} queued: series of {job_id} with profile "
                           f"'{config.profile}'"
                   + (f" and --set {json.dumps(overrides)}" if overrides else ""))


def cancel(store: JobStore, given: str, *, user: str = "") -> Outcome:
    """No further stage of the job starts; a running stage may finish or stop early."""
    job = find_job(store, given)
    if not store.cancel(job["id"], user=user):
        raise ActionError(ErrorCode.CONFIG_ERROR, f"job {job['id']} already ended ({job['state']})")
    return Outcome(job["id"], f"job {job['id']} cancelled")


def release(settings: Settings, store: JobStore, broker: RedisBroker, given: str, *,
            user: str = "") -> Outcome:
    """A job held after failed QC continues; its results are delivered flagged."""
    job = find_job(store, given)
    queues = stage_queues(settings, job)
    try:
        stage, run = review_release(store, job["id"], user)
    except NodeError as exc:
        raise ActionError(exc.code, exc.message, hint=exc.hint) from None
    if stage not in queues:
        raise ActionError(ErrorCode.CONFIG_ERROR,
                          f"job {job['id']}: stage '{stage}' is not in the job's chain")
    _enqueue(settings, broker, job, stage, run, rerun=False)
    return Outcome(job["id"], f"job {job['id']} released: continues with stage '{stage}', "
                              "results flagged")


def discard(store: JobStore, given: str, *, user: str = "") -> Outcome:
    """A job held after failed QC ends cancelled; nothing is delivered."""
    job = find_job(store, given)
    try:
        review_discard(store, job["id"], user)
    except NodeError as exc:
        raise ActionError(exc.code, exc.message, hint=exc.hint) from None
    return Outcome(job["id"], f"job {job['id']} discarded: nothing delivered")


def resend(settings: Settings, store: JobStore, broker: RedisBroker, given: str,
           destination: str, *, user: str = "") -> Outcome:
    """Deliver an ended job's existing results again to one of its destinations.

    The destination's outbox entries go back to pending and the job runs its ``deliver`` stage
    again (a new run): the other destinations, already answered, are not sent to again.
    """
    job = find_job(store, given)
    job_id = job["id"]
    if job["state"] not in ("done", "failed"):
        raise ActionError(ErrorCode.CONFIG_ERROR, f"job {job_id} is {job['state']}: only a done "
                          "or failed job's results are sent again")
    chain: list[str] = job.get("chain") or []
    job_dir = Path(str(job.get("job_dir", "")))
    if "deliver" not in chain or not (job_dir / "encode").is_dir() or job.get("purged"):
        raise ActionError(ErrorCode.FILE_NOT_FOUND, f"job {job_id} has no encoded results to "
                          "send (retry it first)")
    known = destinations_of(job_settings(settings, job.get("config")))
    if destination not in known:
        raise ActionError(ErrorCode.CONFIG_ERROR, f"'{destination}' is not a destination of job "
                          f"{job_id} ({', '.join(known) or 'none'})", status=400)
    reset = reset_destination(job_dir / "outbox.json", destination)
    run = store.restart(job_id, "deliver", user=user)
    store.event(job_id, "resend", destination=destination, instances=reset, user=user)
    _enqueue(settings, broker, job, "deliver", run, rerun=True)
    return Outcome(job_id, f"job {job_id}: results queued for {destination} again (run {run})")

"""Job-state bookkeeping around each stage attempt, as one dramatiq middleware.

Before a stage runs: skip stale or duplicate messages (job ended, older run, another message
holds the stage's lease), record the start (state ``running:<stage>``, attempt, event) and publish
the task's deadline for the supervisor's watchdog. After it returns: write the stage's done-marker,
record end and duration, send the next stage's message (or mark the job ``done``); only then does
dramatiq acknowledge the message. After it raises: classify the error (NodeError code, TIMEOUT,
GPU_OOM), retry transient errors with exponential backoff, fail permanent ones with code, message
and hint (:mod:`workers.retries`). GPU processes release cached GPU memory after every job,
errors included. The task registry is :mod:`workers.runtime`, messages go out through
:mod:`workers.dispatch`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from dramatiq.broker import Broker
from dramatiq.middleware import Middleware, SkipMessage

from kneenode.errors import ErrorCode, NodeError
from kneenode.logs import get_logger
from kneenode.settings import JobsSettings
from kneenode.warm import release_cuda_cache
from workers.dispatch import STAGE_ACTORS, enqueue_stage, time_limit_s
from workers.jobconfig import COMPARE_STAGE, job_chain, job_settings
from workers.jobstate import TERMINAL, now
from workers.priorjobs import after_compare, note_prior_end
from workers.retries import backoff_s, classify, retry_policy
from workers.review import QC_STAGE, after_qc
from workers.runtime import Task, WorkerRuntime
from workers.stages import (
    StageCancelled,
    chain_for,
    fresh_work_dir,
    is_done,
    mark_done,
    next_stage,
)

log = get_logger(__name__)
REDELIVERIES = 10
REDELIVERY_DELAY_MS = 5000


class JobMiddleware(Middleware):
    """Job bookkeeping for the stage actors (see the module docstring)."""

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.rt = runtime
        self.jobs = runtime.settings.jobs

    # -- before --------------------------------------------------------------------------------
    def before_process_message(self, broker: Broker, message: Any) -> None:
        if message.actor_name not in STAGE_ACTORS.values():
            return
        job_id, stage, run = message.args
        store = self.rt.store
        job = store.get(job_id)
        if job is None or int(job["run"]) != run or job["state"].split(":")[0] in TERMINAL:
            log.info("stale stage message skipped", job_id=job_id, stage=stage)
            raise SkipMessage()
        config = job.get("config")
        try:
            settings = job_settings(self.rt.settings, config)
        except ValueError as exc:  # a snapshot this worker's code cannot read
            store.fail(job_id, stage, NodeError(
                ErrorCode.CONFIG_ERROR, f"the job's configuration snapshot is invalid: {exc}"[:500],
                hint="reprocess the series with `kneenode reprocess`").as_dict())
            raise SkipMessage() from None
        chain = job_chain(self.rt.chain, config, chain_for(self.rt.chain_list, self.rt.settings))
        missing = [n for n in job.get("chain") or [stage] if n not in self.rt.chain]
        if stage not in self.rt.chain or missing:
            store.fail(job_id, stage, NodeError(
                ErrorCode.CONFIG_ERROR, f"stage(s) {missing or [stage]} of the job are not in "
                f"this worker's chain ({self.jobs.chain})").as_dict())
            raise SkipMessage()
        ttl = time_limit_s(settings.jobs, stage) + self.jobs.watchdog_grace_s + 60
        if not store.acquire_lease(job_id, stage, message.message_id, ttl):
            log.info("duplicate stage message skipped", job_id=job_id, stage=stage)
            raise SkipMessage()
        job_dir = Path(job["job_dir"])
        if message.kwargs.get("rerun"):
            from workers.stages import clear_from

            clear_from(job_dir, job["chain"], stage)
            store.client.hdel(store.key("job", job_id), "rerun_stage")
        elif _moved_on(job, stage, job_dir):
            store.release_lease(job_id, stage, message.message_id)
            log.info("stage already committed; job has moved on", job_id=job_id, stage=stage)
            raise SkipMessage()
        task = Task(
            job_id=job_id, stage=stage, run=run, message=message, job_dir=job_dir,
            series_path=job["series_path"], summary=_summary(job["series_path"]),
            already_done=is_done(job_dir, stage), settings=settings, chain=chain,
        )
        if not task.already_done:
            task.attempt = store.stage_started(job_id, stage, run, self.rt.worker_id)
            if task.attempt == 0:  # cancelled or retried in the meantime
                store.release_lease(job_id, stage, message.message_id)
                raise SkipMessage()
            task.work_dir = fresh_work_dir(job_dir, stage)
        self.rt.begin(task)

    # -- after ---------------------------------------------------------------------------------
    def after_process_message(
        self, broker: Broker, message: Any, *, result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        if message.actor_name not in STAGE_ACTORS.values():
            return
        task = self.rt.end()
        if task is None:  # the middleware failed before the stage began, or bookkeeping failed
            if exception is not None:
                self._redeliver_later(broker, message, exception)
            return
        if task.requeued:  # requeued by a shutdown: the next worker redoes this stage
            return
        try:
            if self.rt.chain[task.stage].queue == "gpu":
                release_cuda_cache()
            if exception is None:
                self._commit(broker, task)
            else:
                self._error(broker, task, exception)
        except Exception:
            log.exception("job bookkeeping failed", job_id=task.job_id, stage=task.stage)
            raise
        finally:
            self.rt.store.release_lease(task.job_id, task.stage, message.message_id)

    def _redeliver_later(self, broker: Broker, message: Any, exc: BaseException) -> None:
        """Bookkeeping itself failed (redis unreachable, disk full): send the message again later.

        Without this dramatiq would acknowledge the message and the job would wait forever. The
        copy keeps the message id, so a committed stage is not redone on redelivery.
        """
        count = int(message.options.get("redeliveries", 0)) + 1
        job_id, stage, run = message.args
        log.error("stage bookkeeping failed; redelivering the message", job_id=job_id,
                  stage=stage, error=f"{type(exc).__name__}: {exc}", redelivery=count)
        if count > REDELIVERIES:
            err = NodeError(ErrorCode.PIPELINE_ERROR, f"stage '{stage}' could not be recorded "
                            f"{REDELIVERIES} times: {type(exc).__name__}: {exc}"[:500])
            self.rt.store.fail(job_id, stage, err.as_dict(), run=run)
            return
        copy = message._message.copy(options={"redeliveries": count})
        copy.options.pop("eta", None)
        for _ in range(10):  # each enqueue itself retries the connection for jobs.redis_retry_s
            try:
                broker.enqueue(copy, delay=REDELIVERY_DELAY_MS)
                return
            except Exception:  # noqa: BLE001 - redis still down: keep trying for a while
                time.sleep(5)
        log.error("could not redeliver a stage message; reconciliation will re-send it",
                  job_id=job_id, stage=stage)

    def _commit(self, broker: Broker, task: Task) -> None:
        store = self.rt.store
        duration = time.monotonic() - task.started
        if not task.already_done:
            mark_done(task.job_dir, task.stage, {"run": task.run, "duration": duration})
            store.stage_committed(task.job_id, task.stage, duration)
        chain = task.chain
        names = [s.name for s in chain]
        progress = (names.index(task.stage) + 1) / len(names)
        nxt = next_stage(chain, task.stage)
        if task.stage == COMPARE_STAGE:
            after_compare(store, task.job_id, task.job_dir)
        if task.stage == QC_STAGE and after_qc(
                store, task.job_id, task.run, task.job_dir, nxt.name if nxt else None):
            return  # held for review (workers.review): the operator releases or discards it
        # error=None: a stage that committed after retries leaves no stale error on the job
        # (its history stays in the events).
        if nxt is None:
            if store.transition(task.job_id, task.run, state="done", stage="", progress=1.0,
                                error=None):
                store.event(task.job_id, "done")
                note_prior_end(task.job_dir, "done")
            return
        if not store.transition(task.job_id, task.run, state="queued", stage=nxt.name,
                                progress=progress, error=None):
            return  # cancelled (or retried) while this stage ran: no next stage
        enqueue_stage(broker, _jobs(task), job_id=task.job_id, stage=nxt.name, queue=nxt.queue,
                      run=task.run)

    def _error(self, broker: Broker, task: Task, exc: BaseException) -> None:
        store = self.rt.store
        if isinstance(exc, StageCancelled):
            store.stage_update(task.job_id, task.stage, state="cancelled", end=now())
            store.event(task.job_id, "stage_cancelled", stage=task.stage)
            return
        err = classify(exc, task.stage, time_limit_s(_jobs(task), task.stage))
        info = err.as_dict()
        duration = time.monotonic() - task.started
        store.stage_update(task.job_id, task.stage, state="error", end=now(), duration=duration,
                           error=info)
        attempts = store.stage_attempts(task.job_id, task.stage)
        log.warning("stage failed", job_id=task.job_id, stage=task.stage, code=info["code"],
                    error=info["message"], attempt=attempts)
        max_retries, min_s, max_s = retry_policy(task.settings or self.rt.settings, task.stage)
        if err.retryable and attempts <= max_retries:
            delay = backoff_s(attempts, min_s, max_s)
            if not store.transition(task.job_id, task.run, state="retry_wait", error=info):
                return
            store.event(task.job_id, "retry", stage=task.stage, attempt=attempts,
                        delay_s=round(delay, 3), code=info["code"], message=info["message"])
            enqueue_stage(broker, _jobs(task), job_id=task.job_id, stage=task.stage,
                          queue=self.rt.chain[task.stage].queue, run=task.run,
                          delay_ms=int(delay * 1000))
            return
        if not store.fail(task.job_id, task.stage, info, run=task.run):
            return
        note_prior_end(task.job_dir, "failed", info)
        if self.rt.chain[task.stage].queue == "io" or task.stage == "deliver":
            store.incr("delivery_failures")


def _jobs(task: Task) -> JobsSettings:
    """The job's ``jobs`` settings (time limits, retries) from its snapshot."""
    assert task.settings is not None  # set for every task that ran
    return task.settings.jobs


def _moved_on(job: dict[str, Any], stage: str, job_dir: Path) -> bool:
    """A copy of a committed stage's message while a later stage runs (a re-sent duplicate):
    running it would chain the later stage a second time."""
    state = str(job.get("state", ""))
    return state.startswith("running:") and state != f"running:{stage}" and is_done(job_dir, stage)


def _summary(series_path: str) -> dict[str, Any]:
    try:
        data = json.loads((Path(series_path) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}

"""All job-state bookkeeping of a worker process, in one dramatiq middleware.

Before a stage runs: skip stale or duplicate messages (job ended, older run, another message
holds the stage's lease), record the start (state ``running:<stage>``, attempt, event) and publish
the task's deadline for the supervisor's watchdog. After it returns: write the stage's done-marker,
record end and duration, send the next stage's message (or mark the job ``done``); only then does
dramatiq acknowledge the message. After it raises: classify the error (NodeError code, TIMEOUT,
GPU_OOM), retry transient errors with exponential backoff, fail permanent ones with code, message
and hint. GPU processes release cached GPU memory after every job, errors included.
"""

from __future__ import annotations

import gc
import json
import os
import random
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dramatiq.broker import Broker
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware, SkipMessage, TimeLimitExceeded

from kneenode.errors import ErrorCode, NodeError
from kneenode.logs import get_logger
from kneenode.settings import Settings
from workers.actors import STAGE_ACTORS, enqueue_stage, time_limit_s
from workers.jobstate import TERMINAL, JobStore, now
from workers.review import QC_STAGE, after_qc
from workers.stages import Stage, StageCancelled, fresh_work_dir, is_done, mark_done, next_stage

log = get_logger(__name__)
REDELIVERIES = 10
REDELIVERY_DELAY_MS = 5000


@dataclass
class Task:
    """One stage attempt in progress in this process."""

    job_id: str
    stage: str
    run: int
    message: Any
    job_dir: Path
    series_path: str
    summary: dict[str, Any]
    already_done: bool
    started: float = field(default_factory=time.monotonic)
    attempt: int = 0
    work_dir: Path = Path()
    requeued: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)


class WorkerRuntime:
    """What one worker process knows: its settings, chain, store, device and running tasks."""

    def __init__(
        self, settings: Settings, chain: list[Stage], store: JobStore, *, worker_id: str,
        device: str = "cpu", queues: tuple[str, ...] = (),
    ) -> None:
        self.settings = settings
        self.chain = {s.name: s for s in chain}
        self.chain_list = chain
        self.store = store
        self.worker_id = worker_id
        self.device = device
        self.queues = queues
        self.broker: RedisBroker | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self._tasks: dict[int, Task] = {}

    @property
    def record_key(self) -> str:
        """Redis hash describing this worker process (for /health and the watchdog)."""
        return self.store.key("worker", self.worker_id)

    def current_task(self) -> Task | None:
        """The task of the calling worker thread."""
        return getattr(self._local, "task", None)

    def begin(self, task: Task) -> None:
        """Make ``task`` the thread's task and publish its deadline."""
        self._local.task = task
        if task.already_done:
            return
        limit = time_limit_s(self.settings.jobs, task.stage)
        entry = {
            "job_id": task.job_id, "stage": task.stage, "queue": self.chain[task.stage].queue,
            "deadline": now() + limit, "limit_s": limit, "run": task.run,
        }
        ident = threading.get_ident()
        with self._lock:
            self._tasks[ident] = task
        self.store.client.hset(self.record_key, f"task:{ident}", json.dumps(entry))

    def end(self) -> Task | None:
        """Detach the thread's task (None if none began; ``requeued`` set by a shutdown)."""
        task = self.current_task()
        self._local.task = None
        ident = threading.get_ident()
        with self._lock:
            self._tasks.pop(ident, None)
            if task is not None and task.requeued:
                return task
        if task is not None and not task.already_done:
            self.store.client.hdel(self.record_key, f"task:{ident}")
        return task

    def take_in_flight(self) -> list[Task]:
        """Mark every running task as requeued (shutdown) and return them."""
        with self._lock:
            tasks = list(self._tasks.values())
            for t in tasks:
                t.requeued = True
            self._tasks.clear()
        return tasks


def classify(exc: BaseException, stage: str, limit_s: float) -> NodeError:
    """Turn any exception of a stage into a NodeError (code, message, hint, retryable)."""
    if isinstance(exc, NodeError):
        return exc
    if isinstance(exc, TimeLimitExceeded):
        return NodeError(
            ErrorCode.TIMEOUT, f"stage '{stage}' exceeded its time limit of {limit_s:g} s",
            retryable=False,
        )
    text = f"{type(exc).__name__}: {exc}"
    if type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc):
        return NodeError(ErrorCode.GPU_OOM, f"stage '{stage}': {text}"[:500])
    if isinstance(exc, FileNotFoundError):
        return NodeError(ErrorCode.FILE_NOT_FOUND, f"stage '{stage}': {text}"[:500])
    return NodeError(ErrorCode.PIPELINE_ERROR, f"stage '{stage}': {text}"[:500])


def backoff_s(attempt: int, min_s: float, max_s: float) -> float:
    """Exponential backoff with +-20 % jitter: min, 2*min, 4*min ... capped at max."""
    base = min(max_s, min_s * 2 ** max(0, attempt - 1))
    return base * random.uniform(0.8, 1.2)


def retry_policy(settings: Settings, stage: str) -> tuple[int, float, float]:
    """(retries, first delay, longest delay) of a stage: ``delivery`` settings for ``deliver``
    (a PACS may be down for an hour), ``jobs`` settings for every other stage."""
    if stage == "deliver":
        d = settings.delivery
        return d.max_attempts - 1, d.backoff_min_s, d.backoff_max_s
    j = settings.jobs
    return j.max_retries, j.retry_min_backoff_s, j.retry_max_backoff_s


def release_gpu_memory() -> None:
    """Return cached CUDA memory after a GPU job (models stay loaded; only caches go)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


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
        if stage not in self.rt.chain:
            store.fail(job_id, stage, NodeError(
                ErrorCode.CONFIG_ERROR, f"stage '{stage}' is not in this worker's chain "
                f"({self.jobs.chain})").as_dict())
            raise SkipMessage()
        ttl = time_limit_s(self.jobs, stage) + self.jobs.watchdog_grace_s + 60
        if not store.acquire_lease(job_id, stage, message.message_id, ttl):
            log.info("duplicate stage message skipped", job_id=job_id, stage=stage)
            raise SkipMessage()
        job_dir = Path(job["job_dir"])
        if message.kwargs.get("rerun"):
            from workers.stages import clear_from

            clear_from(job_dir, job["chain"], stage)
        task = Task(
            job_id=job_id, stage=stage, run=run, message=message, job_dir=job_dir,
            series_path=job["series_path"], summary=_summary(job["series_path"]),
            already_done=is_done(job_dir, stage),
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
                release_gpu_memory()
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
        for _ in range(60):
            try:
                broker.enqueue(copy, delay=REDELIVERY_DELAY_MS)
                return
            except Exception:  # noqa: BLE001 - redis still down: keep trying for a while
                time.sleep(5)
        log.error("could not redeliver a stage message", job_id=job_id, stage=stage)

    def _commit(self, broker: Broker, task: Task) -> None:
        store = self.rt.store
        duration = time.monotonic() - task.started
        if not task.already_done:
            mark_done(task.job_dir, task.stage, {"run": task.run, "duration": duration})
            store.stage_update(task.job_id, task.stage, state="done", end=now(), duration=duration)
            store.observe_stage(task.stage, duration)
            store.event(task.job_id, "end", stage=task.stage, duration=round(duration, 4))
        chain = self.rt.chain_list
        names = [s.name for s in chain]
        progress = (names.index(task.stage) + 1) / len(names)
        nxt = next_stage(chain, task.stage)
        if task.stage == QC_STAGE and after_qc(
                store, task.job_id, task.run, task.job_dir, nxt.name if nxt else None):
            return  # held for review (workers.review): the operator releases or discards it
        if nxt is None:
            if store.transition(task.job_id, task.run, state="done", stage="", progress=1.0):
                store.event(task.job_id, "done")
            return
        if not store.transition(task.job_id, task.run, state="queued", stage=nxt.name,
                                progress=progress):
            return  # cancelled (or retried) while this stage ran: no next stage
        enqueue_stage(broker, self.jobs, job_id=task.job_id, stage=nxt.name, queue=nxt.queue,
                      run=task.run)

    def _error(self, broker: Broker, task: Task, exc: BaseException) -> None:
        store = self.rt.store
        if isinstance(exc, StageCancelled):
            store.stage_update(task.job_id, task.stage, state="cancelled", end=now())
            store.event(task.job_id, "stage_cancelled", stage=task.stage)
            return
        err = classify(exc, task.stage, time_limit_s(self.jobs, task.stage))
        info = err.as_dict()
        duration = time.monotonic() - task.started
        store.stage_update(task.job_id, task.stage, state="error", end=now(), duration=duration,
                           error=info)
        attempts = store.stage_attempts(task.job_id, task.stage)
        log.warning("stage failed", job_id=task.job_id, stage=task.stage, code=info["code"],
                    error=info["message"], attempt=attempts)
        max_retries, min_s, max_s = retry_policy(self.rt.settings, task.stage)
        if err.retryable and attempts <= max_retries:
            delay = backoff_s(attempts, min_s, max_s)
            if not store.transition(task.job_id, task.run, state="retry_wait", error=info):
                return
            store.event(task.job_id, "retry", stage=task.stage, attempt=attempts,
                        delay_s=round(delay, 3), code=info["code"], message=info["message"])
            enqueue_stage(broker, self.jobs, job_id=task.job_id, stage=task.stage,
                          queue=self.rt.chain[task.stage].queue, run=task.run,
                          delay_ms=int(delay * 1000))
            return
        if not store.fail(task.job_id, task.stage, info, run=task.run):
            return
        if self.rt.chain[task.stage].queue == "io" or task.stage == "deliver":
            store.incr("delivery_failures")


def _summary(series_path: str) -> dict[str, Any]:
    try:
        data = json.loads((Path(series_path) / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def worker_identity() -> str:
    """A readable, unique worker id: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{random.randrange(16**6):06x}"

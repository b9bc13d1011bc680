"""The actors (one per queue) and the one way to send a stage message.

Actors are thin on purpose: the middleware has already loaded the job, claimed the stage and
recorded its start; the actor only builds the :class:`~workers.stages.StageContext` and calls the
stage's plain function. Committing (marker, next message), retries and failures happen in
:class:`workers.middleware.JobMiddleware` after the actor returns or raises.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import dramatiq
from dramatiq import Message
from dramatiq.broker import Broker
from dramatiq.brokers.redis import RedisBroker

from kneenode.settings import JobsSettings
from workers.stages import StageContext

if TYPE_CHECKING:
    from workers.middleware import WorkerRuntime

STAGE_ACTORS: dict[str, str] = {"cpu": "stage_cpu", "gpu": "stage_gpu", "io": "stage_io"}


def time_limit_s(jobs: JobsSettings, stage: str) -> float:
    """The time limit of one attempt of ``stage``."""
    return float(jobs.stage_time_limits.get(stage, jobs.stage_time_limit_s))


def enqueue_stage(
    broker: Broker,
    jobs: JobsSettings,
    *,
    job_id: str,
    stage: str,
    queue: str,
    run: int,
    rerun: bool = False,
    delay_ms: int | None = None,
) -> str:
    """Send the message that runs ``stage`` of ``job_id``; return the dramatiq message id.

    Producers (the job creator, ``kneenode retry``, the middleware chaining to the next stage)
    need no actor objects: the message names the queue's actor and carries the stage's time
    limit, which dramatiq's TimeLimit middleware enforces.
    """
    broker.declare_queue(queue)
    message: Message[None] = Message(
        queue_name=queue,
        actor_name=STAGE_ACTORS[queue],
        args=(job_id, stage, run),
        kwargs={"rerun": rerun},
        options={"time_limit": int(time_limit_s(jobs, stage) * 1000)},
    )
    return broker.enqueue(message, delay=delay_ms).message_id


def declare_actors(broker: RedisBroker, runtime: WorkerRuntime) -> None:
    """Declare the three stage actors on ``broker``; they call into ``runtime``'s chain."""

    def run_stage(job_id: str, stage: str, run: int, rerun: bool = False) -> None:
        del run, rerun  # checked by the middleware before the actor runs
        task = runtime.current_task()
        if task is None or task.job_id != job_id or task.already_done:
            return
        ctx = StageContext(
            job_id=job_id,
            job_dir=task.job_dir,
            series_path=Path(task.series_path),
            work_dir=task.work_dir,
            summary=task.summary,
            settings=task.settings or runtime.settings,
            device=runtime.device if runtime.chain[stage].queue == "gpu" else "cpu",
            attempt=task.attempt,
            cancelled=task.cancelled,
        )
        runtime.chain[stage].fn(ctx)

    for queue, actor_name in STAGE_ACTORS.items():
        dramatiq.actor(actor_name=actor_name, queue_name=queue, broker=broker)(run_stage)

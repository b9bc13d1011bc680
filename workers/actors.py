"""The stage actors (one per queue): each runs its task's stage function.

Actors are thin on purpose: the middleware has already loaded the job, claimed the stage and
recorded its start in the runtime's task registry; the actor only builds the
:class:`~workers.stages.StageContext` from the task (the job's own settings) and calls the stage's
plain function. Committing (marker, next message), retries and failures happen in
:class:`workers.middleware.JobMiddleware` after the actor returns or raises.
"""

from __future__ import annotations

from pathlib import Path

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from workers.dispatch import LOOKUP_ACTOR, STAGE_ACTORS
from workers.runtime import WorkerRuntime
from workers.stages import StageContext


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

    def lookup_priors(job_id: str) -> None:
        from workers.priors import run_lookup

        run_lookup(runtime.settings, runtime.store, job_id)

    dramatiq.actor(actor_name=LOOKUP_ACTOR, queue_name="io", broker=broker)(lookup_priors)

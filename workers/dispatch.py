"""Stage dispatch: the one way to send the message that runs a stage of a job.

Producers (the job creator, ``kneenode retry`` / ``reprocess``, reconciliation, the middleware
chaining to the next stage) need no actor objects: the message names the queue's actor
(:data:`STAGE_ACTORS`) and carries the stage's time limit from the job's own settings, which
dramatiq's TimeLimit middleware enforces.
"""

from __future__ import annotations

from dramatiq import Message
from dramatiq.broker import Broker

from kneenode.settings import JobsSettings

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


#: The actor of the priors lookup (workers.priors), on the io queue beside delivery.
LOOKUP_ACTOR = "priors_lookup"


def enqueue_lookup(broker: Broker, *, job_id: str, time_limit_s: float) -> str:
    """Send the priors lookup of ``job_id`` (once: a lookup is not retried, its failure is an
    outcome the job reports)."""
    broker.declare_queue("io")
    message: Message[None] = Message(
        queue_name="io", actor_name=LOOKUP_ACTOR, args=(job_id,), kwargs={},
        options={"time_limit": int(time_limit_s * 1000), "max_retries": 0},
    )
    return broker.enqueue(message).message_id

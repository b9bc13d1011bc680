"""One worker process: ``python -m workers.process --queues cpu --threads 2 ...``.

Started by :mod:`workers.supervisor` (from ``kneenode serve`` or ``kneenode worker``), never by
hand. It consumes the named queues with a dramatiq Worker, publishes a record (pid, queues,
device, running tasks with deadlines) that /health and the supervisor's watchdog read, and on
SIGTERM/SIGINT lets running stages finish for ``jobs.shutdown_grace_s``, then puts the unfinished
ones back on their queues and exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from dramatiq import Worker

from kneenode import warm
from kneenode.logs import configure_logging, get_logger
from kneenode.settings import Settings, load_settings
from workers.actors import declare_actors
from workers.broker import make_broker, make_client
from workers.jobstate import JobStore, now
from workers.middleware import JobMiddleware
from workers.runtime import WorkerRuntime
from workers.stages import load_stages

log = get_logger(__name__)
BEAT_S = 1.0
RECORD_TTL_S = 10


def resolve_device(device: str, queues: tuple[str, ...]) -> str:
    """``auto`` -> ``cuda:0`` when a GPU is visible to torch, else ``cpu``; others unchanged."""
    if device != "auto":
        return device
    if "gpu" not in queues:
        return "cpu"
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda:0" if torch.cuda.is_available() else "cpu"


def _beat(rt: WorkerRuntime, threads: int, stop: threading.Event) -> None:
    """Refresh this worker's record; flag tasks whose job was cancelled meanwhile."""
    store = rt.store
    static: dict[str, Any] = {
        "pid": os.getpid(), "host": socket.gethostname(), "queues": ",".join(rt.queues),
        "device": rt.device, "threads": threads, "started": now(),
    }
    while True:
        try:
            pipe = store.client.pipeline(transaction=True)
            pipe.hset(rt.record_key, mapping={**static, "beat": now()})
            pipe.expire(rt.record_key, RECORD_TTL_S)
            pipe.sadd(store.key("workers"), rt.worker_id)
            pipe.execute()
            with rt._lock:
                tasks = list(rt._tasks.values())
            for task in tasks:
                state = store.client.hget(store.key("job", task.job_id), "state")
                if state == "cancelled":
                    task.cancelled.set()
        except Exception as exc:  # noqa: BLE001 - redis may be restarting; keep beating
            log.warning("worker heartbeat failed", worker_id=rt.worker_id, error=str(exc))
        if stop.wait(BEAT_S):
            return


def _shutdown(worker: Worker, rt: WorkerRuntime, grace_s: float) -> None:
    """Let running stages finish for ``grace_s``; requeue what is still running, then return."""
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout": int(grace_s * 1000)},
                               daemon=True)
    stopper.start()
    stopper.join(grace_s + 5)
    broker = rt.broker
    for task in rt.take_in_flight():
        msg = task.message
        try:
            if broker is not None:
                broker.do_requeue(msg.queue_name, msg.options["redis_message_id"])
            rt.store.release_lease(task.job_id, task.stage, msg.message_id)
            rt.store.transition(task.job_id, task.run, state="queued", stage=task.stage)
            rt.store.event(task.job_id, "requeued", stage=task.stage, reason="worker shutdown",
                           worker=rt.worker_id)
            log.info("running stage requeued at shutdown", job_id=task.job_id, stage=task.stage)
        except Exception:
            log.warning("requeue at shutdown failed", job_id=task.job_id, exc_info=True)
    try:
        rt.store.client.delete(rt.record_key)
        rt.store.client.srem(rt.store.key("workers"), rt.worker_id)
    except Exception:  # noqa: BLE001, S110 - best effort; the record expires anyway
        pass


def run_worker(settings: Settings, *, redis_url: str, queues: tuple[str, ...], threads: int,
               device: str, worker_id: str) -> None:
    """Consume ``queues`` until SIGTERM/SIGINT; see the module docstring."""
    if "gpu" in queues:
        threads = 1  # one job at a time per GPU process
    chain = load_stages(settings)  # every declared stage: each job brings its own chain
    warm.configure(settings.jobs.warm_models, settings.jobs.gpu_headroom_mb)
    store = JobStore(make_client(redis_url, retry_s=settings.jobs.redis_retry_s),
                     settings.jobs.namespace)
    rt = WorkerRuntime(settings, chain, store, worker_id=worker_id,
                       device=resolve_device(device, queues), queues=queues)
    broker = make_broker(redis_url, settings.jobs, extra_middleware=[JobMiddleware(rt)])
    broker.broker_id = worker_id  # the supervisor requeues a dead child's messages by this id
    rt.broker = broker
    declare_actors(broker, rt)
    broker.emit_after("process_boot")
    worker = Worker(broker, queues=set(queues), worker_timeout=settings.jobs.poll_ms,
                    worker_threads=threads)
    worker.queue_prefetch = threads  # never hoard messages another host could run
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    worker.start()
    beat = threading.Thread(target=_beat, args=(rt, threads, stop), daemon=True)
    beat.start()
    log.info("worker started", worker_id=worker_id, queues=list(queues), threads=threads,
             device=rt.device, pid=os.getpid())
    while not stop.wait(0.5):
        pass
    log.info("worker stopping", worker_id=worker_id)
    _shutdown(worker, rt, settings.jobs.shutdown_grace_s)
    log.info("worker stopped", worker_id=worker_id)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the worker child process."""
    p = argparse.ArgumentParser(prog="workers.process")
    p.add_argument("--queues", required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--redis-url", required=True)
    p.add_argument("--worker-id", required=True)
    p.add_argument("--config", type=Path, default=None)
    a = p.parse_args(argv)
    settings = load_settings(a.config)
    configure_logging(settings.logging)
    queues = tuple(q for q in a.queues.split(",") if q)
    run_worker(settings, redis_url=a.redis_url, queues=queues, threads=a.threads,
               device=a.device, worker_id=a.worker_id)
    time.sleep(0.05)
    os._exit(0)  # stuck native calls in daemon threads must not keep the process alive


if __name__ == "__main__":
    main()

"""What one worker process knows and runs: its settings, stages, store, device and tasks.

:class:`WorkerRuntime` is the process's task registry: each worker thread's current
:class:`Task` (one stage attempt), the deadlines it publishes for the supervisor's watchdog, and
the in-flight tasks a shutdown requeues. The middleware fills it, the actors read it.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dramatiq.brokers.redis import RedisBroker

from kneenode.settings import Settings
from workers.dispatch import time_limit_s
from workers.jobstate import JobStore, now
from workers.stages import Stage


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
    settings: Settings | None = None  # the job's settings (its snapshot over the worker's)
    chain: list[Stage] = field(default_factory=list)  # the job's chain


class WorkerRuntime:
    """What one worker process knows: its settings, the stages it can run, store, device and
    running tasks. ``chain`` holds every declared stage; each job brings its own chain and
    settings (its snapshot, :mod:`workers.jobconfig`)."""

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
        limit = time_limit_s((task.settings or self.settings).jobs, task.stage)
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


def worker_identity() -> str:
    """A readable, unique worker id: host, pid and a random suffix."""
    return f"{socket.gethostname()}-{os.getpid()}-{random.randrange(16**6):06x}"

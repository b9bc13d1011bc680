"""The worker supervisor: starts worker processes, restarts dead ones, enforces time limits.

dramatiq's time limit is an exception raised inside the worker thread; it cannot interrupt a
stage stuck in native code (a CUDA kernel, a C extension). The supervisor is the process-level
watchdog: a stage still running ``jobs.watchdog_grace_s`` past its deadline (published by the
worker in its redis record) fails its job with TIMEOUT, and the worker process is killed and
restarted. A worker that dies for any reason (kill -9, OOM killer, segfault) is restarted and the
messages it had fetched are put back on their queues at once (see
:func:`workers.broker.requeue_dead_worker`), so no job waits for the broker's heartbeat timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kneenode.errors import ErrorCode, NodeError
from kneenode.logs import get_logger
from kneenode.settings import Settings
from workers.broker import make_client, requeue_dead_worker
from workers.jobstate import JobStore, now
from workers.redisproc import die_with_parent

log = get_logger(__name__)


@dataclass(frozen=True)
class ChildSpec:
    """What one worker process consumes."""

    queues: tuple[str, ...]
    threads: int = 1
    device: str = "cpu"


@dataclass
class Child:
    """A running worker process."""

    spec: ChildSpec
    proc: subprocess.Popen[bytes]
    worker_id: str
    started: float = field(default_factory=time.monotonic)
    failures: int = 0
    killed_by_watchdog: bool = False


def specs_for_serve(settings: Settings) -> list[ChildSpec]:
    """The worker processes ``kneenode serve`` runs: cpu, io and one per GPU device."""
    j = settings.jobs
    specs = [ChildSpec(("cpu",), j.cpu_threads) for _ in range(j.cpu_processes)]
    specs += [ChildSpec(("gpu",), 1, dev) for dev in j.gpu_devices]
    specs += [ChildSpec(("io",), j.io_threads) for _ in range(j.io_processes)]
    return specs


def specs_for_worker(queues: list[str], processes: int, threads: int, device: str) -> list[ChildSpec]:
    """``kneenode worker``: gpu processes run one job at a time; other queues share processes."""
    specs: list[ChildSpec] = []
    other = tuple(q for q in queues if q != "gpu")
    for _ in range(processes):
        if "gpu" in queues:
            specs.append(ChildSpec(("gpu",), 1, device))
        if other:
            specs.append(ChildSpec(other, threads, "cpu"))
    return specs


class Supervisor:
    """Runs and watches worker processes (one per :class:`ChildSpec`)."""

    def __init__(self, settings: Settings, redis_url: str, specs: list[ChildSpec],
                 config: Path | None = None) -> None:
        self.settings = settings
        self.redis_url = redis_url
        self.specs = specs
        self.config = config
        self.store = JobStore(make_client(redis_url, retry_s=settings.jobs.redis_retry_s),
                              settings.jobs.namespace)
        self.children: list[Child] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        """Spawn every worker process and the monitor thread."""
        with self._lock:
            self.children = [self._spawn(spec) for spec in self.specs]
        self._thread = threading.Thread(target=self._monitor, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self, grace_s: float | None = None) -> None:
        """SIGTERM every worker (they finish or requeue), SIGKILL stragglers, requeue leftovers."""
        grace = self.settings.jobs.shutdown_grace_s if grace_s is None else grace_s
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            children = list(self.children)
        for c in children:
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace + 15
        for c in children:
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker did not stop; killing it", pid=c.proc.pid)
                c.proc.kill()
                c.proc.wait(5)
            self._cleanup(c)
        log.info("workers stopped", count=len(children))

    def pids(self) -> list[int]:
        """PIDs of the current worker processes."""
        with self._lock:
            return [c.proc.pid for c in self.children]

    # -- internals ----------------------------------------------------------------------------
    def _spawn(self, spec: ChildSpec) -> Child:
        worker_id = f"{os.uname().nodename}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        cmd = [
            sys.executable, "-m", "workers.process", "--queues", ",".join(spec.queues),
            "--threads", str(spec.threads), "--device", spec.device,
            "--redis-url", self.redis_url, "--worker-id", worker_id,
        ]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        # Own session: a terminal's Ctrl-C reaches only the supervisor, which stops workers in
        # order. Parent-death signal: a supervisor killed with -9 leaves no orphaned worker.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent)  # noqa: PLW1509
        log.info("worker process started", pid=proc.pid, queues=list(spec.queues),
                 worker_id=worker_id)
        return Child(spec=spec, proc=proc, worker_id=worker_id)

    def _cleanup(self, child: Child) -> None:
        """After a child exits: requeue what it held, note it on its jobs, drop its record."""
        try:
            record = self.store.client.hgetall(self.store.key("worker", child.worker_id))
            moved = requeue_dead_worker(self.store.client, self.settings.jobs, child.worker_id)
            for k, v in record.items():
                if k.startswith("task:"):
                    task = json.loads(v)
                    self.store.event(task["job_id"], "worker_exit", stage=task["stage"],
                                     worker=child.worker_id, code=child.proc.returncode)
            self.store.client.delete(self.store.key("worker", child.worker_id))
            self.store.client.srem(self.store.key("workers"), child.worker_id)
            if moved:
                log.warning("requeued messages of an exited worker", worker_id=child.worker_id,
                            count=moved)
        except Exception:
            log.warning("cleanup of exited worker failed", worker_id=child.worker_id, exc_info=True)

    def _monitor(self) -> None:
        while not self._stopping.wait(0.5):
            with self._lock:
                children = list(self.children)
            for i, child in enumerate(children):
                if child.proc.poll() is not None:
                    self._restart(i, child)
                else:
                    self._watchdog(child)

    def _restart(self, index: int, child: Child) -> None:
        lived = time.monotonic() - child.started
        log.warning("worker process exited", pid=child.proc.pid, code=child.proc.returncode,
                    lived_s=round(lived, 1), watchdog=child.killed_by_watchdog)
        self._cleanup(child)
        failures = 0 if lived > 30 or child.killed_by_watchdog else child.failures + 1
        if failures:
            time.sleep(min(30.0, 0.5 * 2**failures))  # crash loop: back off
        if self._stopping.is_set():
            return
        new = self._spawn(child.spec)
        new.failures = failures
        with self._lock:
            self.children[index] = new

    def _watchdog(self, child: Child) -> None:
        try:
            record = self.store.client.hgetall(self.store.key("worker", child.worker_id))
            for k, v in record.items():
                if k.startswith("task:"):
                    task = json.loads(v)
                    if self._overdue(child, task) or self._cancelled_gpu(child, task):
                        child.killed_by_watchdog = True
                        child.proc.kill()
                        return
        except Exception:  # noqa: BLE001 - redis restarting: look again next tick
            log.warning("watchdog could not read worker state", worker_id=child.worker_id)

    def _overdue(self, child: Child, task: dict[str, Any]) -> bool:
        """Past deadline + grace: fail the job with TIMEOUT (the caller kills the worker)."""
        grace = self.settings.jobs.watchdog_grace_s
        if now() <= float(task["deadline"]) + grace:
            return False
        child.proc.kill()  # first: the stuck stage stops now, however slow the records below are
        err = NodeError(
            ErrorCode.TIMEOUT,
            f"stage '{task['stage']}' ran {task['limit_s']:g} s + {grace:g} s grace without "
            f"stopping; its worker process (pid {child.proc.pid}) was killed and restarted",
            retryable=False,
        )
        # The job's state last: whoever sees it failed also sees the event and the stage record.
        self.store.event(task["job_id"], "watchdog", stage=task["stage"], pid=child.proc.pid)
        self.store.stage_update(task["job_id"], task["stage"], state="error", end=now(),
                                error=err.as_dict())
        self.store.fail(task["job_id"], task["stage"], err.as_dict(), run=int(task["run"]))
        log.error("watchdog: stage stuck past its time limit; killing worker",
                  job_id=task["job_id"], stage=task["stage"], pid=child.proc.pid)
        return True

    def _cancelled_gpu(self, child: Child, task: dict[str, Any]) -> bool:
        """A GPU stage of a cancelled job still running after the grace: free the GPU."""
        if task.get("queue") != "gpu":
            return False  # cpu/io processes run other jobs' stages too: let the stage end
        job = self.store.client.hmget(self.store.key("job", task["job_id"]), "state", "updated")
        if job[0] != "cancelled" or now() <= float(job[1] or 0) + self.settings.jobs.watchdog_grace_s:
            return False
        self.store.stage_update(task["job_id"], task["stage"], state="cancelled", end=now())
        self.store.event(task["job_id"], "watchdog", stage=task["stage"], pid=child.proc.pid,
                         reason="cancelled job's GPU stage did not stop")
        log.warning("watchdog: cancelled job still holds the GPU; killing worker",
                    job_id=task["job_id"], stage=task["stage"], pid=child.proc.pid)
        return True

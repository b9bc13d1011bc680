"""``kneenode serve``: the whole node in one command.

Start order: embedded redis (unless ``jobs.redis_url``) -> worker processes for every queue ->
HTTP status server -> reconciliation of stranded jobs (:mod:`workers.reconcile`) -> Storage SCP
with the job creator as its ``on_complete``. SIGINT/SIGTERM stop
in reverse: the SCP stops accepting associations and finishes in-flight C-STOREs, workers finish
or requeue their stages, then the status server and redis (by PID) stop. ``data_dir/serve.json``
tells operators and tests the ports of the running node.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from kneenode.errors import NodeError
from kneenode.fsio import write_json_atomic
from kneenode.logs import get_logger
from kneenode.settings import Settings
from kneenode.signals import install_stop_handlers
from workers.broker import (
    durability_warning,
    make_broker,
    make_client,
    redis_folder,
    requeue_orphans,
)
from workers.console.auth import check_exposure
from workers.http import StatusServer
from workers.intake import make_on_complete
from workers.jobconfig import startup_stages
from workers.jobstate import JobStore
from workers.reconcile import ReconcileLoop, job_reconciler
from workers.redisproc import RedisChild, start_redis
from workers.retention import RetentionLoop
from workers.supervisor import Supervisor, specs_for_serve

log = get_logger(__name__)


def scp_available() -> bool:
    """Whether the edge's ``scp.server.start_scp`` exists in this build."""
    try:
        return hasattr(importlib.import_module("scp.server"), "start_scp")
    except ImportError:
        return False


class Node:
    """The composed node; :meth:`start` then :meth:`stop` (idempotent)."""

    def __init__(self, settings: Settings, config: Path | None = None, *, with_scp: bool = True):
        self.settings = settings
        self.config = config
        self.with_scp = with_scp
        self.redis: RedisChild | None = None
        self.supervisor: Supervisor | None = None
        self.http: StatusServer | None = None
        self.scp: Any = None
        self.retention: RetentionLoop | None = None
        self.reconcile: ReconcileLoop | None = None
        self.redis_url = ""

    def start(self) -> None:
        """Start every part; on any failure, stop what already started and re-raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        s = self.settings
        # a bad jobs.chain or a profile naming a missing model stops the node before anything
        # starts (not even data_dir is created)
        chain = startup_stages(s)
        if s.jobs.http_enabled:  # off loopback without accounts: refused before anything starts
            check_exposure(s)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        if s.jobs.redis_url:
            self.redis_url = s.jobs.redis_url
        else:
            self.redis = self._start_redis(s.jobs.redis_port)
            self.redis_url = self.redis.url
        store = JobStore(make_client(self.redis_url, retry_s=s.jobs.redis_retry_s),
                         s.jobs.namespace)
        if self.redis is not None:
            moved = requeue_orphans(store.client, s.jobs)
            if moved:
                log.warning("requeued messages left by workers of a crashed run", count=moved)
        else:
            durability_warning(store.client)
        broker = make_broker(self.redis_url, s.jobs)
        self.supervisor = Supervisor(s, self.redis_url, specs_for_serve(s), self.config)
        self.supervisor.start()
        if s.jobs.http_enabled:  # its own client: /health must answer at once while redis is down
            self.http = StatusServer(JobStore(make_client(self.redis_url), s.jobs.namespace), s,
                                     self.redis_url)
            self.http.start()
        self.retention = RetentionLoop(s, store)
        self.retention.start()
        queues = {st.name: st.queue for st in chain}
        self.reconcile = ReconcileLoop(s, [job_reconciler(s, store, broker, queues)])
        self.reconcile.start()
        if self.with_scp:
            from scp.server import start_scp

            self.scp = start_scp(s, make_on_complete(s, store, broker, chain))
        self._write_info()

    def check(self) -> None:
        """Called every half second by :func:`serve`: restart the embedded redis if it died.

        It restarts on the same port and folder and reloads its AOF; workers, the SCP's job
        creator and the status server reconnect on their own.
        """
        if self.redis is None or self.redis.process.poll() is None:
            return
        log.error("embedded redis exited; restarting it", pid=self.redis.pid,
                  code=self.redis.process.returncode)
        try:
            self.redis = self._start_redis(self.redis.port)
        except NodeError as exc:  # e.g. port taken meanwhile: try again on the next tick
            log.error("embedded redis restart failed", error=exc.message)
            return
        self._write_info()

    def _start_redis(self, port: int) -> RedisChild:
        s = self.settings
        return start_redis(redis_folder(s), port=port, executable=s.jobs.redis_server,
                           appendfsync=s.jobs.redis_appendfsync)

    def _write_info(self) -> None:
        if self.supervisor is None:
            return
        s = self.settings
        info = {
            "pid": os.getpid(), "redis_url": self.redis_url,
            "redis_pid": self.redis.pid if self.redis else None,
            "http_port": self.http.port if self.http else None,
            "scp_port": getattr(self.scp, "port", None),
            "worker_pids": self.supervisor.pids(),
        }
        write_json_atomic(s.data_dir / "serve.json", info)
        log.info("node ready", **info)

    def stop(self) -> None:
        """Stop in reverse order; every part is stopped even if an earlier one fails."""
        for name, part in (("scp", self.scp), ("reconcile", self.reconcile),
                           ("retention", self.retention),
                           ("workers", self.supervisor), ("http", self.http), ("redis", self.redis)):
            if part is None:
                continue
            try:
                part.stop()
            except Exception:
                log.exception("stop failed", part=name)
        self.scp = self.supervisor = self.http = self.redis = self.retention = None
        self.reconcile = None
        (self.settings.data_dir / "serve.json").unlink(missing_ok=True)


def serve(settings: Settings, config: Path | None = None, *, with_scp: bool = True) -> None:
    """Run the node until SIGINT/SIGTERM, then shut it down gracefully."""
    stop = install_stop_handlers()
    node = Node(settings, config, with_scp=with_scp)
    node.start()
    try:
        while not stop.wait(0.5):
            node.check()
        log.info("shutting down")
    finally:
        node.stop()
    log.info("node stopped")

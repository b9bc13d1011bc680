"""The HTTP status server (starlette + uvicorn), loopback by default.

``GET /health``  redis reachable, live workers per queue, free disk of data_dir, whether the
                 spool takes instances (``spool``: watermark and a write probe, see
                 :mod:`scp.edgehealth`); 503 if redis is down, a queue has no worker or the
                 spool is degraded (``status`` says which).
``GET /jobs``    newest jobs (``?state=failed&limit=50``).
``GET /jobs/{id}`` one job with its events.
``GET /metrics`` Prometheus text format (see :mod:`workers.metrics`).
"""

from __future__ import annotations

import shutil
import threading
import time
from typing import Any

import redis
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kneenode.settings import Settings
from scp.edgehealth import spool_health
from workers.jobstate import JobStore
from workers.metrics import live_workers, render


def health(store: JobStore, settings: Settings) -> tuple[int, dict[str, Any]]:
    """The health document and its HTTP status."""
    usage = shutil.disk_usage(settings.data_dir if settings.data_dir.exists() else ".")
    doc: dict[str, Any] = {
        "disk": {"path": str(settings.data_dir), "free_bytes": usage.free,
                 "free_percent": round(100 * usage.free / usage.total, 2)},
    }
    try:
        store.client.ping()
        doc["redis"] = "ok"
        doc["workers"] = live_workers(store)
    except redis.RedisError as exc:
        doc["redis"] = f"error: {exc}"
        doc["workers"] = {}
        doc["status"] = "down"
        return 503, doc
    missing = [q for q, n in doc["workers"].items() if n == 0]
    doc["spool"] = spool_health(settings)
    degraded = bool(missing) or doc["spool"]["status"] != "ok"
    doc["status"] = "degraded" if degraded else "ok"
    if missing:
        doc["queues_without_workers"] = missing
    return (503 if degraded else 200), doc


def make_app(store: JobStore, settings: Settings) -> Starlette:
    """The status application over one job store."""

    async def get_health(request: Request) -> JSONResponse:
        status, doc = await run_in_threadpool(health, store, settings)
        return JSONResponse(doc, status_code=status)

    async def get_jobs(request: Request) -> JSONResponse:
        state = request.query_params.get("state")
        try:
            limit = int(request.query_params.get("limit", "50"))
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, status_code=400)
        jobs = await run_in_threadpool(store.list_jobs, state, limit)
        return JSONResponse({"jobs": jobs, "count": len(jobs)})

    async def get_job(request: Request) -> JSONResponse:
        job_id = request.path_params["job_id"]
        job = await run_in_threadpool(store.get, job_id)
        if job is None:
            return JSONResponse({"error": f"no job {job_id}"}, status_code=404)
        job["events"] = await run_in_threadpool(store.events, job_id)
        return JSONResponse(job)

    async def get_metrics(request: Request) -> Response:
        body = await run_in_threadpool(render, store, settings.jobs)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    return Starlette(routes=[
        Route("/health", get_health),
        Route("/jobs", get_jobs),
        Route("/jobs/{job_id}", get_job),
        Route("/metrics", get_metrics),
    ])


class StatusServer:
    """uvicorn serving :func:`make_app` in a background thread; :meth:`stop` ends it."""

    def __init__(self, store: JobStore, settings: Settings) -> None:
        config = uvicorn.Config(
            make_app(store, settings), host=settings.jobs.http_host, port=settings.jobs.http_port,
            log_level="warning", access_log=False, lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self, timeout: float = 10.0) -> None:
        """Start serving; raise if the port cannot be bound."""
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError(f"status server did not start on {self.server.config.host}:"
                              f"{self.server.config.port}")
            time.sleep(0.02)

    @property
    def port(self) -> int:
        """The bound port (useful with http_port = 0)."""
        servers = getattr(self.server, "servers", [])
        for s in servers:
            for sock in s.sockets:
                return int(sock.getsockname()[1])
        return self.server.config.port

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it."""
        self.server.should_exit = True
        self.thread.join(10)

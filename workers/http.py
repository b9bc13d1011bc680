"""The HTTP status server (starlette + uvicorn), loopback by default, with the web console.

``GET /health``  redis reachable, live workers per queue, free disk of data_dir, whether the
                 spool takes instances (``spool``: watermark and a write probe, see
                 :mod:`scp.edgehealth`); 503 if redis is down, a queue has no worker or the
                 spool is degraded (``status`` says which).
``GET /jobs``    newest jobs (``?state=failed&limit=50``).
``GET /jobs/{id}`` one job with its events.
``GET /metrics`` Prometheus text format (see :mod:`workers.metrics`).

The web console (:mod:`workers.console`, docs/console.md) shares the server. ``/health`` and
``/metrics`` never need a login; with accounts (``http.users``) the JSON API needs a console
session or HTTP Basic credentials of an account, without accounts (loopback only) it is open.
"""

from __future__ import annotations

import threading
import time

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kneenode.settings import Settings
from workers.broker import make_broker
from workers.console.app import console, console_middleware
from workers.console.auth import check_exposure
from workers.health import health
from workers.jobstate import JobStore
from workers.metrics import render


def make_app(store: JobStore, settings: Settings, redis_url: str) -> Starlette:
    """The status application and the console over one job store (``redis_url``: its redis, for
    the console's actions and uploads).

    Raises
    ------
    NodeError
        CONFIG_ERROR when ``jobs.http_host`` is off loopback and there are no accounts.
    """
    check_exposure(settings)

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

    pages, handlers = console(store, settings, make_broker(redis_url, settings.jobs), redis_url)
    return Starlette(routes=[
        Route("/health", get_health),
        Route("/jobs", get_jobs),
        Route("/jobs/{job_id}", get_job),
        Route("/metrics", get_metrics),
        *pages,
    ], middleware=console_middleware(settings), exception_handlers=handlers)


class StatusServer:
    """uvicorn serving :func:`make_app` in a background thread; :meth:`stop` ends it."""

    def __init__(self, store: JobStore, settings: Settings, redis_url: str) -> None:
        tls = settings.http
        config = uvicorn.Config(
            make_app(store, settings, redis_url), host=settings.jobs.http_host,
            port=settings.jobs.http_port, log_level="warning", access_log=False, lifespan="off",
            ssl_certfile=str(tls.tls_cert) if tls.tls_cert else None,
            ssl_keyfile=str(tls.tls_key) if tls.tls_key else None,
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

"""The web console: server-rendered pages on the status server, behind login and CSRF checks.

Pages (``/``, ``/ui/...``) are Jinja2 templates; the live parts (jobs list, job page, front
page) are HTML fragments that ``static/console.js`` fetches every two seconds and swaps in, so
no page reloads and no JavaScript framework is needed. Every POST is a form with a CSRF token;
actions call :mod:`workers.actions` (the same code as the CLI) with the logged-in user's name.
Access rules: :mod:`workers.console.auth`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dramatiq.brokers.redis import RedisBroker
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from kneenode.logs import get_logger
from kneenode.settings import DEFAULT_PROFILE, Settings
from workers import actions
from workers.actions import ActionError
from workers.console import results as result_files
from workers.console import uploads
from workers.console.auth import (
    LOOPBACK_HOSTS,
    Csrf,
    User,
    authenticate,
    session_user,
    signing_key,
)
from workers.console.views import (
    front,
    job_detail,
    job_rows,
    pdf_report,
    read_results,
    results_table,
)
from workers.jobstate import STATES, JobStore

log = get_logger(__name__)
HERE = Path(__file__).parent
PUBLIC = ("/health", "/metrics", "/login")
API = ("/jobs",)
ACTIONS = ("retry", "reprocess", "cancel", "resend", "release", "discard")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none';"
                               " form-action 'self'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def _basic_user(settings: Settings, header: str) -> User | None:
    """The account of an ``Authorization: Basic`` header (scripts calling the JSON API)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return authenticate(settings.http, name, password)


class AuthGate:
    """Default deny: only ``PUBLIC`` paths and the static files pass without a user.

    The user comes from the session cookie; the JSON API (``/jobs...``) also takes HTTP Basic
    credentials of an account. A missing login is a redirect to ``/login`` for pages, 401 for
    the API.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        path = scope["path"]
        user = session_user(self.settings, request.session)
        api = any(path == p or path.startswith(p + "/") for p in API)
        if user is None and api and "authorization" in request.headers:
            user = await run_in_threadpool(_basic_user, self.settings,
                                           request.headers["authorization"])
        scope.setdefault("state", {})["user"] = user
        if user is None and path not in PUBLIC and not path.startswith("/static/"):
            if api:
                response: Response = JSONResponse(
                    {"error": "login needed: HTTP Basic credentials of a console account"},
                    status_code=401, headers={"WWW-Authenticate": 'Basic realm="kneenode"'})
            else:
                response = RedirectResponse(f"/login?next={quote(path)}", status_code=303)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """CSP and friends on every response (the pages load only their own script and style)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] += [(k.lower().encode(), v.encode())
                                       for k, v in SECURITY_HEADERS.items()]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


def console_middleware(settings: Settings) -> list[Middleware]:
    """Host check (loopback without accounts), signed session cookie, security headers, login."""
    out = []
    if not settings.http.users:  # DNS rebinding: another site's name pointing at 127.0.0.1
        out.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK_HOSTS)))
    out += [
        Middleware(SecurityHeaders),
        Middleware(SessionMiddleware, secret_key=signing_key(settings),
                   session_cookie="kneenode_session", max_age=settings.http.session_max_age_s,
                   same_site="lax", https_only=settings.http.cookies_secure),
        Middleware(AuthGate, settings=settings),
    ]
    return out


def console(store: JobStore, settings: Settings, broker: RedisBroker, redis_url: str
            ) -> tuple[list[BaseRoute], dict[Any, Any]]:
    """The console's pages, fragments, downloads and form handlers, and its error page (JSON
    for the API) as starlette exception handlers."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    csrf = Csrf(signing_key(settings), settings.http.session_max_age_s)
    profiles = [DEFAULT_PROFILE, *settings.profiles]

    def user_of(request: Request) -> User:
        user = request.state.user
        assert user is not None  # AuthGate let the request through
        return user

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        user = request.state.user
        context.update(request=request, user=user, csrf=csrf.token(request.session),
                       flash=request.session.pop("flash", None), accounts=bool(settings.http.users),
                       show_patient=settings.http.show_patient, profiles=profiles)
        return templates.TemplateResponse(request, name, context, status_code=status)

    def fragment(request: Request, name: str, **context: Any) -> HTMLResponse:
        context.update(request=request, user=request.state.user, csrf=csrf.token(request.session),
                       show_patient=settings.http.show_patient, profiles=profiles)
        return templates.TemplateResponse(request, name, context,
                                          headers={"Cache-Control": "no-store"})

    async def form_checked(request: Request, *, operator: bool) -> FormData:
        """The form of a POST whose CSRF token is valid (403 otherwise; also for a viewer when
        the form is an operator's action)."""
        user = request.state.user
        if operator and (user is None or not user.operator):
            raise HTTPException(403, f"user '{user.name if user else ''}' has the role viewer: "
                                     "actions need the role operator")
        form = await request.form(max_files=0, max_fields=20)
        if not csrf.valid(request.session, str(form.get("csrf") or "")):
            log.warning("form refused: CSRF token missing or invalid", path=request.url.path)
            raise HTTPException(403, "the form's CSRF token is missing or invalid: reload the "
                                     "page and submit it again")
        return form

    async def job_or_404(job_id: str) -> dict[str, Any]:
        job = await run_in_threadpool(store.get, job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id}")
        return job

    # -- pages --------------------------------------------------------------------------------
    async def home(request: Request) -> Response:
        page = await run_in_threadpool(front, store, settings)
        return render(request, "front.html", **page)

    async def home_live(request: Request) -> Response:
        page = await run_in_threadpool(front, store, settings)
        return fragment(request, "_front.html", **page)

    def _filters(request: Request) -> tuple[str, str]:
        return request.query_params.get("state", ""), request.query_params.get("sender", "")

    async def jobs_page(request: Request) -> Response:
        state, sender = _filters(request)
        rows, senders = await run_in_threadpool(
            lambda: job_rows(store, settings, state=state, sender=sender))
        return render(request, "jobs.html", rows=rows, senders=senders, states=STATES,
                      state=state, sender=sender, query=request.url.query)

    async def jobs_rows(request: Request) -> Response:
        state, sender = _filters(request)
        rows, _ = await run_in_threadpool(
            lambda: job_rows(store, settings, state=state, sender=sender))
        return fragment(request, "_rows.html", rows=rows)

    async def job_page(request: Request) -> Response:
        job = await job_or_404(request.path_params["job_id"])
        detail = await run_in_threadpool(job_detail, store, settings, job)
        return render(request, "job.html", d=detail)

    async def job_live(request: Request) -> Response:
        job = await job_or_404(request.path_params["job_id"])
        detail = await run_in_threadpool(job_detail, store, settings, job)
        return fragment(request, "_job.html", d=detail)

    async def job_action(request: Request) -> Response:
        job_id, action = request.path_params["job_id"], request.path_params["action"]
        if action not in ACTIONS:
            raise HTTPException(404, f"no action {action}")
        form = await form_checked(request, operator=True)
        name = user_of(request).name
        calls: dict[str, Callable[[], actions.Outcome]] = {
            "retry": lambda: actions.retry(settings, store, broker, job_id, user=name,
                                           from_stage=str(form.get("from_stage") or "") or None),
            "reprocess": lambda: actions.reprocess(settings, store, broker, job_id, user=name,
                                                   profile=str(form.get("profile") or "") or None),
            "cancel": lambda: actions.cancel(store, job_id, user=name),
            "resend": lambda: actions.resend(settings, store, broker, job_id,
                                             str(form.get("destination") or ""), user=name),
            "release": lambda: actions.release(settings, store, broker, job_id, user=name),
            "discard": lambda: actions.discard(store, job_id, user=name),
        }
        try:
            outcome = await run_in_threadpool(calls[action])
        except ActionError as exc:
            log.info("console action refused", job_id=job_id, action=action, user=name,
                     error=exc.message)
            request.session["flash"] = {"kind": "error", "text": exc.message}
            if exc.status == 404:
                raise HTTPException(404, exc.message) from None
            return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)
        log.info("console action", job_id=job_id, action=action, user=name)
        request.session["flash"] = {"kind": "ok", "text": outcome.message}
        return RedirectResponse(f"/ui/jobs/{outcome.job_id}", status_code=303)

    async def results_page(request: Request) -> Response:
        job = await job_or_404(request.path_params["job_id"])
        results = await run_in_threadpool(read_results, job)
        images = await run_in_threadpool(result_files.images, job) if results else []
        return render(request, "results.html", job=job, results=results,
                      table=results_table(results) if results else None, images=images,
                      has_pdf=await run_in_threadpool(lambda: pdf_report(job) is not None))

    async def results_zip(request: Request) -> Response:
        job = await job_or_404(request.path_params["job_id"])
        found = await run_in_threadpool(result_files.zip_stream, job)
        if found is None:
            raise HTTPException(404, f"job {job['id']} has no results yet")
        name, chunks = found
        return StreamingResponse(chunks, media_type="application/zip", headers={
            "Content-Disposition": f'attachment; filename="{name}"'})

    async def report_pdf(request: Request) -> Response:
        job = await job_or_404(request.path_params["job_id"])
        data = await run_in_threadpool(pdf_report, job)
        if data is None:
            raise HTTPException(404, f"job {job['id']} has no PDF report")
        return Response(data, media_type="application/pdf", headers={
            "Content-Disposition": f'inline; filename="kneenode-{job["id"]}.pdf"'})

    async def result_image(request: Request) -> Response:
        job = await job_or_404(request.path_params["job_id"])
        name = request.path_params["name"]
        found = {i.name: i for i in await run_in_threadpool(result_files.images, job)}
        if name not in found:
            raise HTTPException(404, f"job {job['id']} has no image {name}")
        return FileResponse(found[name].path, media_type="image/png")

    async def upload_page(request: Request) -> Response:
        return render(request, "upload.html", limit=uploads.limit_text(settings))

    async def upload_post(request: Request) -> Response:
        user = user_of(request)
        if not user.operator:
            raise HTTPException(403, f"user '{user.name}' has the role viewer: upload needs the "
                                     "role operator")
        try:
            job_id = await uploads.receive(request, settings, redis_url, csrf, user.name)
        except uploads.Refused as exc:
            log.info("upload refused", user=user.name, error=exc.text[:200])
            return render(request, "upload.html", status=exc.status,
                          limit=uploads.limit_text(settings), refusal=exc.text)
        request.session["flash"] = {"kind": "ok", "text": f"upload queued as job {job_id}"}
        return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)

    # -- login --------------------------------------------------------------------------------
    def _next(value: str) -> str:
        return value if value.startswith("/") and not value.startswith("//") else "/"

    async def login_page(request: Request) -> Response:
        if not settings.http.users:
            return RedirectResponse("/", status_code=303)
        return render(request, "login.html", next=_next(request.query_params.get("next", "/")))

    async def login_post(request: Request) -> Response:
        form = await form_checked(request, operator=False)
        name, password = str(form.get("name") or ""), str(form.get("password") or "")
        user = await run_in_threadpool(authenticate, settings.http, name, password)
        if user is None:
            log.warning("console login failed", user=name[:64])
            return render(request, "login.html", status=401, next=_next(str(form.get("next", "/"))),
                          error="wrong user name or password")
        request.session.clear()  # a new session: nothing of the anonymous one carries over
        request.session["user"] = user.name
        log.info("console login", user=user.name, role=user.role)
        return RedirectResponse(_next(str(form.get("next") or "/")), status_code=303)

    async def logout(request: Request) -> Response:
        await form_checked(request, operator=False)
        request.session.clear()
        return RedirectResponse("/login" if settings.http.users else "/", status_code=303)

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if request.url.path.startswith("/jobs"):
            return JSONResponse({"error": exc.detail}, status_code=exc.status_code)
        return render(request, "error.html", status=exc.status_code, status_code=exc.status_code,
                      detail=exc.detail)

    routes: list[tuple[str, Callable[[Request], Awaitable[Response]], list[str]]] = [
        ("/", home, ["GET"]), ("/ui/health", home_live, ["GET"]),
        ("/ui/jobs", jobs_page, ["GET"]), ("/ui/jobs/rows", jobs_rows, ["GET"]),
        ("/ui/jobs/{job_id}", job_page, ["GET"]), ("/ui/jobs/{job_id}/live", job_live, ["GET"]),
        ("/ui/jobs/{job_id}/results", results_page, ["GET"]),
        ("/ui/jobs/{job_id}/results.zip", results_zip, ["GET"]),
        ("/ui/jobs/{job_id}/report.pdf", report_pdf, ["GET"]),
        ("/ui/jobs/{job_id}/images/{name}", result_image, ["GET"]),
        ("/ui/jobs/{job_id}/{action}", job_action, ["POST"]),
        ("/ui/upload", upload_page, ["GET"]), ("/ui/upload", upload_post, ["POST"]),
        ("/login", login_page, ["GET"]), ("/login", login_post, ["POST"]),
        ("/logout", logout, ["POST"]),
    ]
    out: list[BaseRoute] = [Route(path, fn, methods=methods) for path, fn, methods in routes]
    out.append(Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"))
    return out, {HTTPException: refused}

"""The upload form's handler over :mod:`workers.upload` (checks, staging, the job).

The body is refused early when it declares (Content-Length) or reaches more than
``upload.max_bytes`` plus a little room for the form's other fields, so an oversized upload is
not spooled to disk first; every other check (zip-slip, bombs, not DICOM, several series ...)
is :func:`workers.upload.import_upload`'s, whose code, message and hint the page shows.
"""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as FormFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import Message, Receive

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import Settings
from workers.console.auth import Csrf

FORM_ROOM = 1 << 20  # bytes of multipart framing and fields on top of the files


class Refused(Exception):
    """An upload refused, with the text the page shows and the HTTP status."""

    def __init__(self, text: str, status: int = 400) -> None:
        super().__init__(text)
        self.text = text
        self.status = status


def _shown(exc: NodeError) -> str:
    return f"{exc.code}: {exc.message}. {exc.hint}"


def limit_text(settings: Settings) -> str:
    """``upload.max_bytes`` for the form's hint."""
    return f"{settings.upload.max_bytes / 1e6:,.0f} MB (upload.max_bytes)"


def _too_large(size: int, settings: Settings) -> Refused:
    exc = NodeError(ErrorCode.UPLOAD_TOO_LARGE, f"the upload is {size:,} bytes or more, more "
                    f"than upload.max_bytes = {settings.upload.max_bytes:,}")
    return Refused(_shown(exc), 413)


def _limited(receive: Receive, settings: Settings) -> Receive:
    """``receive`` that refuses the request once its body passes the limit."""
    seen = 0

    async def inner() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > settings.upload.max_bytes + FORM_ROOM:
                raise _too_large(seen, settings)
        return message

    return inner


async def receive(request: Request, settings: Settings, redis_url: str, csrf: Csrf,
                  user: str) -> str:
    """Check and import the upload of ``request``; the new job's ID.

    Raises
    ------
    Refused
        With ``CODE: message. hint`` of the refusal (nothing was kept).
    HTTPException
        403 for a form without a valid CSRF token.
    """
    from workers.upload import UploadFile, import_upload, upload_hand_off

    declared = int(request.headers.get("content-length") or 0)
    if declared > settings.upload.max_bytes + FORM_ROOM:
        raise _too_large(declared, settings)
    body = Request(request.scope, _limited(request.receive, settings))
    form = await body.form(max_files=settings.upload.max_members, max_fields=20)
    try:
        if not csrf.valid(request.session, str(form.get("csrf") or "")):
            raise HTTPException(403, "the form's CSRF token is missing or invalid: reload the "
                                     "page and submit it again")
        parts: list[Any] = [f for f in form.getlist("files") if isinstance(f, FormFile)]
        files = [UploadFile(str(f.filename or "upload"), f.file) for f in parts if f.filename]
        profile = str(form.get("profile") or "")
        try:
            outcome = await run_in_threadpool(
                lambda: import_upload(files, settings=settings, profile=profile, user=user,
                                      hand_off=upload_hand_off(settings, redis_url)))
        except NodeError as exc:
            raise Refused(_shown(exc)) from None
    finally:
        await form.close()
    if not outcome.job_id:
        raise Refused(f"the series was stored but no job was made yet ({outcome.hand_off_error}):"
                      " the node makes it when redis is back", 503)
    return str(outcome.job_id)

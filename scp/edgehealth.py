"""Can the edge take instances right now? The spool part of ``/health``.

Checked live on each call (not cached): the free-space watermark that makes the SCP answer
0xA700, and a small write + fsync in spool/tmp, which fails on a full or read-only filesystem
(the SCP then answers 0xA701). The last receive write failure is reported beside them.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from kneenode.settings import Settings

_PROBE_BYTES = 64 * 1024
_last_failure: dict[str, Any] = {}
_lock = threading.Lock()


def record_write_failure(error: str) -> None:
    """Remember a failed write while receiving (reported by :func:`spool_health`)."""
    with _lock:
        _last_failure.update(error=error, time=time.time())


def last_write_failure() -> dict[str, Any]:
    with _lock:
        return dict(_last_failure)


def below_watermark(root: Path, min_free_bytes: int, min_free_percent: float) -> str:
    """Why free space is below the spool watermark ("" when it is not)."""
    usage = shutil.disk_usage(root)
    if usage.free < min_free_bytes or usage.free * 100.0 < min_free_percent * usage.total:
        return (f"spool below free-space watermark: {usage.free} bytes free "
                f"({100.0 * usage.free / usage.total:.1f} %), instances refused with 0xA700")
    return ""


def probe_write(folder: Path) -> str:
    """Write, fsync and remove a small file in ``folder``; the error ("" when it worked)."""
    path = folder / f".health-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(b"\0" * _PROBE_BYTES)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        return ""
    except OSError as exc:
        return f"spool not writable ({type(exc).__name__}: {exc}), instances refused with 0xA701"
    finally:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass


def spool_health(settings: Settings) -> dict[str, Any]:
    """``{"status": "ok" | "degraded", "reasons": [...], "last_write_failure": {...}}``."""
    root = settings.spool_dir
    reasons: list[str] = []
    if not root.is_dir():
        return {"status": "ok", "reasons": [], "note": "no spool yet"}
    tmp = root / "tmp"
    reasons.extend(r for r in (
        below_watermark(root, settings.spool.min_free_bytes, settings.spool.min_free_percent),
        probe_write(tmp if tmp.is_dir() else root),
    ) if r)
    doc: dict[str, Any] = {"status": "degraded" if reasons else "ok", "reasons": reasons}
    failure = last_write_failure()
    if failure:
        doc["last_write_failure"] = failure
    return doc

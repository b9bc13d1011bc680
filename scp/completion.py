"""Series completion: a series is complete after a quiet period with no new instance, or earlier.

Earlier means policy ``auto``: :mod:`scp.early` examines the series of an association that
ended and calls :meth:`CompletionMonitor.close_now` for those provably whole. Both paths close
through :func:`scp.closing.close_version` (which records ``closed_by`` and the wait) under the
series lock, so one batch of instances never becomes two versions.

The monitor is a thread of the SCP process. Each poll it (1) finishes any complete version that
lacks its summary or announcement (a crash between the steps), then (2) closes every open series
that has been quiet long enough: one atomic rename into ``complete/``, a ``summary.json``, then
the ``on_complete`` hand-off, then the ``announced`` marker. All state is in the spool, so a
restart resumes exactly here. Instances arriving after completion start a new open series that
becomes the next version, linked to the previous one.

Every step is isolated per series (:meth:`CompletionMonitor._isolated`): one series that cannot
be closed, summarised or handed off never stops the others. A summary that cannot be built is
replaced by one that records why (``invalid``), so the series is handed off once and ignored
with that reason instead of failing on every poll; a failed hand-off (the jobs layer is down) is
retried for that series alone, with a growing delay. Every ``jobs.reconcile_interval_s`` the
monitor also asks the hand-off which recorded jobs it no longer knows (see
:func:`scp.announce.missing_hand_offs`) and announces those versions again.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kneenode.fsio import write_json_atomic
from kneenode.logs import get_logger
from kneenode.settings import Settings
from scp import metrics
from scp.announce import CompletedSeries, OnComplete, missing_hand_offs
from scp.closing import TIMER, close_version, dcm_snapshot, read_closed
from scp.routing import Origin, quiet_seconds_for
from scp.spool import SeriesKey, Spool, being_imported, read_events
from scp.summary import summarize_series

log = get_logger(__name__)

SUMMARY = "summary.json"
ANNOUNCED = "announced"
RETRY_MAX_S = 60.0
T = TypeVar("T")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _events(version_dir: Path) -> list[dict[str, Any]]:
    """The series' events for its summary (a damaged events file costs the events, not the series)."""
    try:
        return read_events(version_dir)
    except (OSError, ValueError) as exc:
        return [{"event": "events_unreadable", "error": f"{type(exc).__name__}: {exc}"}]


class CompletionMonitor:
    """Closes quiet series and announces complete versions (see module docstring)."""

    def __init__(self, spool: Spool, settings: Settings, on_complete: OnComplete) -> None:
        self.spool = spool
        self.settings = settings
        self.on_complete = on_complete
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # After a restart every open series gets a full quiet period again: while the node was
        # down its senders could not send, so downtime is not quiet time.
        self.started = time.time()
        self._retry_at: dict[str, tuple[int, float]] = {}  # series step -> (failures, next try)
        self._reconciled = 0.0
        self._checked = False
        self._claimed: set[Path] = set()  # versions being finished by close_now's thread

    def start(self) -> None:
        """Run :meth:`poll_once` every ``completion.poll_seconds`` in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="completion", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        """Stop polling (the current poll finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:
                log.exception("completion poll failed")
            self._stop.wait(self.settings.completion.poll_seconds)

    def poll_once(self, now: float | None = None) -> list[CompletedSeries]:
        """One pass: recover unfinished versions, close quiet series. Returns those announced."""
        now = time.time() if now is None else now
        announced = [s for s in (self._isolated(str(p), self._finish, p, now=now)
                                 for p in self._unfinished()) if s is not None]
        for key in self.spool.open_series():
            version_dir = self._isolated(f"{key.study_uid}/{key.series_uid}",
                                         self._close_if_quiet, key, now, now=now)
            if version_dir is not None:
                series = self._isolated(str(version_dir), self._finish, version_dir, now=now)
                if series is not None:
                    announced.append(series)
        if now - self._reconciled >= self.settings.jobs.reconcile_interval_s:
            self._reconciled = now
            announced += self._isolated("reconcile", self._reconcile, now=now) or []
        return announced

    def _isolated(self, what: str, step: Callable[..., T], *args: Any, now: float) -> T | None:
        """Run one per-series step; on error log it, back off that step alone, return None."""
        failures, next_try = self._retry_at.get(what, (0, 0.0))
        if now < next_try:
            return None
        try:
            result = step(*args)
        except Exception as exc:  # noqa: BLE001 - one bad series must not stop the others
            failures += 1
            delay = min(RETRY_MAX_S, self.settings.completion.poll_seconds * 2 ** failures)
            self._retry_at[what] = (failures, now + delay)
            log.error("series completion step failed; other series continue", step=step.__name__,
                      series=what, failures=failures, retry_in_s=round(delay, 2),
                      error=f"{type(exc).__name__}: {exc}"[:300])
            return None
        self._retry_at.pop(what, None)
        return result

    def stopping(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s; True once the monitor is stopping (for helper threads)."""
        return self._stop.wait(timeout)

    def close_now(self, key: SeriesKey, closed_by: str, snapshot: dict[str, tuple[int, int]],
                  **detail: object) -> CompletedSeries | None:
        """Close an open series at once (the release path of :mod:`scp.early`) and announce it.

        Only if the folder still holds exactly the instances that were examined (``snapshot``,
        see :func:`scp.closing.dcm_snapshot`): an instance that arrived since, or a timer close
        that came first, makes this a no-op (None). The same lock and rename as the timer path,
        so a batch never becomes two versions.
        """
        if self._stop.is_set():
            return None
        with self.spool.locked(key):
            folder = self.spool.incoming_dir(key)
            if not folder.is_dir() or dcm_snapshot(folder) != snapshot:
                return None
            next_dir = self.spool.versions_dir(key) / f"v{(self.spool.versions(key) or [0])[-1] + 1}"
            self._claimed.add(next_dir)  # before the rename: the poll thread must not finish it
            try:
                version, dest = close_version(self.spool, key, closed_by, **detail)
            except BaseException:
                self._claimed.discard(next_dir)
                raise
        try:
            metrics.SERIES_COMPLETED.inc()
            if version > 1:
                metrics.LATE_ARRIVALS.inc()
            log.info("series complete", study_uid=key.study_uid, series_uid=key.series_uid,
                     version=version, closed_by=closed_by)
            # isolated like the poll's steps: a failed hand-off is retried by the poll thread
            return self._isolated(str(dest), self._finish, dest, now=time.time())
        finally:
            self._claimed.discard(next_dir)

    def announce(self, version_dir: Path) -> CompletedSeries:
        """Summarise and hand off one complete version now (an upload's own announcement,
        :mod:`workers.upload`): the same steps as a closed series, in the caller's thread.
        Raises when the hand-off fails (a running edge announces the version later)."""
        return self._finish(version_dir)

    def _unfinished(self) -> list[Path]:
        return [p for _, _, p in self.spool.complete_versions()
                if not (p / ANNOUNCED).exists() and p not in self._claimed
                and not being_imported(p)]

    def _reconcile(self) -> list[CompletedSeries]:
        """Announce again every version whose recorded job the jobs layer no longer knows."""
        recorded: dict[tuple[str, int], Path] = {}
        for key, version, path in self.spool.complete_versions():
            if _read_json(path / ANNOUNCED).get("job_id"):
                recorded[(key.series_uid, version)] = path
        lost = missing_hand_offs(self.on_complete, list(recorded))
        (log.info if lost or not self._checked else log.debug)(
            "hand-offs checked", recorded=len(recorded), lost=len(lost))
        self._checked = True
        again = []
        for series_key in sorted(lost):
            path = recorded[series_key]
            log.warning("complete series has no job any more; handing it off again",
                        series_uid=series_key[0], version=series_key[1])
            series = self._isolated(str(path), self._finish, path, now=time.time())
            if series is not None:
                again.append(series)
        return again

    def _close_if_quiet(self, key: SeriesKey, now: float) -> Path | None:
        folder = self.spool.incoming_dir(key)
        with self.spool.locked(key):
            if not folder.is_dir():
                return None
            source = _read_json(folder / "source.json")
            quiet = quiet_seconds_for(self.settings, Origin.of(source))
            if now - max(self.spool.last_activity(key), self.started) < quiet:
                return None
            version, dest = close_version(self.spool, key, TIMER, quiet_seconds=quiet)
        metrics.SERIES_COMPLETED.inc()
        if version > 1:
            metrics.LATE_ARRIVALS.inc()
        log.info("series complete", study_uid=key.study_uid, series_uid=key.series_uid,
                 version=version, quiet_seconds=quiet, closed_by=TIMER)
        return dest

    def _finish(self, version_dir: Path) -> CompletedSeries:
        """Write the summary if missing, announce, mark announced. Idempotent.

        Raises when the hand-off fails (the caller retries this version later).
        """
        summary_path = version_dir / SUMMARY
        summary = _read_json(summary_path)
        if not summary:
            try:
                summary = self._build_summary(version_dir)
            except Exception as exc:  # noqa: BLE001 - recorded in the summary, never retried
                summary = self._unusable_summary(version_dir, exc)
            write_json_atomic(summary_path, summary)
        series = CompletedSeries(
            study_uid=str(summary.get("study_uid") or version_dir.parent.parent.name),
            series_uid=str(summary.get("series_uid") or version_dir.parent.name),
            version=int(version_dir.name[1:]), path=version_dir, summary=summary,
        )
        job_id = self.on_complete(series)
        write_json_atomic(version_dir / ANNOUNCED, {
            "time": time.time(), "job_id": job_id if isinstance(job_id, str) else None,
        })
        return series

    def _unusable_summary(self, version_dir: Path, exc: Exception) -> dict[str, Any]:
        """The summary of a version whose headers could not be summarised: the reason, once."""
        reason = f"series summary could not be built: {type(exc).__name__}: {exc}"[:500]
        log.error("series summary failed; the series is handed off as invalid",
                  series_uid=version_dir.parent.name, version=version_dir.name, error=reason)
        source = _read_json(version_dir / "source.json")
        return {
            "study_uid": version_dir.parent.parent.name, "series_uid": version_dir.parent.name,
            "version": int(version_dir.name[1:]), "modality": "",
            "instance_count": len(list(version_dir.glob("*.dcm"))), "invalid": reason,
            "geometry": {"consistent": False, "is_3d": False, "slices": 0, "reason": reason,
                         "malformed": True},
            "calling_ae": source.get("calling_ae", ""), "called_ae": source.get("called_ae", ""),
            "address": source.get("address", ""), "first_received": source.get("first_received"),
            "completed": time.time(), "late_arrival": bool(source.get("previous_version")),
            "previous_version": source.get("previous_version"),
        }

    def _build_summary(self, version_dir: Path) -> dict:
        source = _read_json(version_dir / "source.json")
        summary = summarize_series(version_dir, self.settings.reader)
        version = int(version_dir.name[1:])
        study_uid, series_uid = version_dir.parent.parent.name, version_dir.parent.name
        previous = source.get("previous_version")
        closed = read_closed(version_dir)
        summary.update(
            study_uid=summary["study_uid"] or study_uid,
            series_uid=summary["series_uid"] or series_uid,
            version=version,
            previous_version=previous,
            previous_path=str(version_dir.parent / f"v{previous}") if previous else None,
            late_arrival=bool(previous),
            calling_ae=source.get("calling_ae", ""),
            called_ae=source.get("called_ae", ""),
            address=source.get("address", ""),
            first_received=source.get("first_received"),
            completed=time.time(),
            closed_by=str(closed.get("closed_by") or TIMER),
            completion_wait_seconds=closed.get("wait_seconds"),
            completion=closed,
            events=_events(version_dir),
        )
        if source.get("upload"):  # who uploaded it, the chosen profile (workers.upload)
            summary["upload"] = source["upload"]
        return summary

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
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from kneenode.fsio import write_json_atomic
from kneenode.logs import get_logger
from kneenode.settings import Settings
from scp import metrics
from scp.announce import CompletedSeries, OnComplete
from scp.closing import TIMER, close_version, dcm_snapshot, read_closed
from scp.spool import SeriesKey, Spool, read_events
from scp.summary import summarize_series

log = get_logger(__name__)

SUMMARY = "summary.json"
ANNOUNCED = "announced"


def quiet_seconds_for(settings: Settings, calling_ae: str) -> float:
    """The quiet period for a series from ``calling_ae`` (per-peer override or the default)."""
    for peer in settings.scp.peers:
        if peer.ae_title == calling_ae and peer.quiet_seconds is not None:
            return peer.quiet_seconds
    return settings.completion.quiet_seconds


def completion_policy_for(settings: Settings, calling_ae: str) -> str:
    """The completion policy (``auto`` / ``timer``) for ``calling_ae`` (per peer or default)."""
    for peer in settings.scp.peers:
        if peer.ae_title == calling_ae and peer.completion_policy is not None:
            return peer.completion_policy
    return settings.completion.policy


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


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
        announced = [s for s in map(self._finish, self._unfinished()) if s is not None]
        now = time.time() if now is None else now
        for key in self.spool.open_series():
            version_dir = self._close_if_quiet(key, now)
            if version_dir is not None:
                series = self._finish(version_dir)
                if series is not None:
                    announced.append(series)
        return announced

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
            return self._finish(dest)
        finally:
            self._claimed.discard(next_dir)

    def _unfinished(self) -> list[Path]:
        return [p for _, _, p in self.spool.complete_versions()
                if not (p / ANNOUNCED).exists() and p not in self._claimed]

    def _close_if_quiet(self, key: SeriesKey, now: float) -> Path | None:
        folder = self.spool.incoming_dir(key)
        with self.spool.locked(key):
            if not folder.is_dir():
                return None
            source = _read_json(folder / "source.json")
            quiet = quiet_seconds_for(self.settings, str(source.get("calling_ae", "")))
            if now - max(self.spool.last_activity(key), self.started) < quiet:
                return None
            version, dest = close_version(self.spool, key, TIMER, quiet_seconds=quiet)
        metrics.SERIES_COMPLETED.inc()
        if version > 1:
            metrics.LATE_ARRIVALS.inc()
        log.info("series complete", study_uid=key.study_uid, series_uid=key.series_uid,
                 version=version, quiet_seconds=quiet, closed_by=TIMER)
        return dest

    def _finish(self, version_dir: Path) -> CompletedSeries | None:
        """Write the summary if missing, announce, mark announced. Idempotent."""
        summary_path = version_dir / SUMMARY
        summary = _read_json(summary_path)
        if not summary:
            summary = self._build_summary(version_dir)
            write_json_atomic(summary_path, summary)
        series = CompletedSeries(
            study_uid=summary["study_uid"], series_uid=summary["series_uid"],
            version=int(summary["version"]), path=version_dir, summary=summary,
        )
        try:
            self.on_complete(series)
        except Exception:
            log.exception("announcing a complete series failed; will retry",
                          series_uid=series.series_uid, version=series.version)
            return None
        write_json_atomic(version_dir / ANNOUNCED, {"time": time.time()})
        return series

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
            events=read_events(version_dir),
        )
        return summary

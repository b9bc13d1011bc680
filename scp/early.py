"""Completion on release: close a series as soon as its association ends, when provably whole.

Policy ``auto`` (see docs/conformance.md). Bound to pynetdicom's notification events (accepted,
released, aborted, connection closed) and told by the C-STORE handler which series each
association carried. When an association ends, a short-lived thread examines each of its series
(header reads are cached per file, so a sender using one association per file costs one read per
file, not one per file per association):

* ``release+count``: the headers' expected count is met by whole stacks -> closed at once;
* ``release+geometry``: every stack gap-free and evenly spaced, and after
  ``completion.release_grace_seconds`` the same peer (calling AE + address) has opened no other
  association and holds none that has sent nothing yet -> closed. Otherwise the series is kept
  for re-examination when that peer's next association ends.

Anything else is left to the quiet timer, which also covers a restart (this state is only in
memory; the spool is the truth). A background thread reads the headers of ``auto`` series
while they arrive, so the examination at the release reads only the last few. Closing goes through
:meth:`scp.completion.CompletionMonitor.close_now`, which closes only what was examined.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import evt
from pynetdicom.events import Event

from kneenode.logs import get_logger
from kneenode.settings import Settings
from scp.closing import RELEASE_COUNT, RELEASE_GEOMETRY, dcm_snapshot
from scp.completion import CompletionMonitor, completion_policy_for
from scp.spool import SeriesKey, Spool, append_event
from scp.wholeness import SliceHeader, Wholeness, assess, read_header

log = get_logger(__name__)

Peer = tuple[str, str]  # (calling AE title, IP address)


@dataclass
class _Assoc:
    peer: Peer
    opened: float
    series: set[SeriesKey] = field(default_factory=set)


class EarlyCompletion:
    """Tracks associations and their series; closes whole series when an association ends."""

    def __init__(self, spool: Spool, settings: Settings, monitor: CompletionMonitor) -> None:
        self.spool = spool
        self.settings = settings
        self.monitor = monitor
        self._lock = threading.Lock()
        self._assocs: dict[Any, _Assoc] = {}
        self._opened: dict[Peer, list[float]] = {}
        self._deferred: dict[Peer, set[SeriesKey]] = {}
        self._headers: dict[SeriesKey, dict[str, tuple[tuple[int, int], SliceHeader]]] = {}
        self._declined: dict[SeriesKey, str] = {}
        self._exam_lock = threading.Lock()  # one examination reads headers at a time
        self._prefetch: queue.Queue[SeriesKey] = queue.Queue()
        threading.Thread(target=self._prefetch_loop, name="completion-headers",
                         daemon=True).start()

    def handlers(self) -> list[tuple[Any, Any]]:
        """The notification handlers to bind on the server (``evt_handlers``)."""
        return [(evt.EVT_ACCEPTED, self.on_accepted), (evt.EVT_RELEASED, self.on_ended),
                (evt.EVT_ABORTED, self.on_ended), (evt.EVT_CONN_CLOSE, self.on_ended)]

    # -- events (network threads: record and return) ---------------------------------------
    def on_accepted(self, event: Event) -> None:
        """EVT_ACCEPTED: remember when this peer opened an association."""
        now = time.time()
        peer = _peer(event)
        with self._lock:
            self._assocs[event.assoc] = _Assoc(peer, now)
            horizon = now - 60 - self.settings.completion.release_grace_seconds
            self._opened[peer] = [t for t in self._opened.get(peer, []) if t > horizon] + [now]

    def stored(self, event: Event, key: SeriesKey) -> None:
        """Called by the C-STORE handler after an instance is spooled; never raises."""
        try:
            with self._lock:
                rec = self._assocs.get(event.assoc)
                if rec is not None:  # None: its connection already closed (the timer decides)
                    rec.series.add(key)
            if rec is not None and completion_policy_for(self.settings, rec.peer[0]) == "auto":
                self._prefetch.put(key)
        except Exception:  # tracking must never fail an acknowledged store
            log.exception("could not record the series of an association")

    def on_ended(self, event: Event) -> None:
        """EVT_RELEASED / EVT_ABORTED / EVT_CONN_CLOSE: examine its series off the network thread.

        The first of these events for an association does the work; the others find it gone.
        """
        ended = time.time()
        with self._lock:
            rec = self._assocs.pop(event.assoc, None)
            if rec is None:
                return
            keys = rec.series | self._deferred.pop(rec.peer, set())
        if keys:
            threading.Thread(target=self._examine, args=(rec.peer, keys, ended),
                             name="completion-release", daemon=True).start()

    # -- examination ------------------------------------------------------------------------
    def _examine(self, peer: Peer, keys: set[SeriesKey], ended: float) -> None:
        try:
            self._prune()
            self._examine_keys(peer, keys, ended)
        except Exception:  # the quiet timer still covers these series
            log.exception("examining series on release failed; the quiet timer will close them")

    def _examine_keys(self, peer: Peer, keys: set[SeriesKey], ended: float) -> None:
        pending: list[tuple[SeriesKey, dict[str, tuple[int, int]], Wholeness]] = []
        for key in sorted(keys, key=lambda k: (k.study_uid, k.series_uid)):
            judged = self._judge(key, peer)
            if judged is None:
                continue
            snapshot, verdict = judged
            if verdict.count_met:
                self._close(key, RELEASE_COUNT, snapshot, verdict)
            elif verdict.whole:
                pending.append((key, snapshot, verdict))
            else:
                self._decline(key, str(verdict.reason))
        if not pending:
            return
        grace = self.settings.completion.release_grace_seconds
        if self.monitor.stopping(max(0.0, ended + grace - time.time())):
            return
        for key, snapshot, verdict in pending:
            busy = self._peer_busy(peer, ended, key)
            if busy:
                with self._lock:
                    self._deferred.setdefault(peer, set()).add(key)
                self._decline(key, busy)
            else:
                self._close(key, RELEASE_GEOMETRY, snapshot, verdict, grace_seconds=grace)

    def _judge(self, key: SeriesKey, peer: Peer
               ) -> tuple[dict[str, tuple[int, int]], Wholeness] | None:
        """(snapshot, verdict) for an open series under ``auto``; None when not ours to judge."""
        with self._exam_lock:
            return self._judge_locked(key, peer)

    def _judge_locked(self, key: SeriesKey, peer: Peer
                      ) -> tuple[dict[str, tuple[int, int]], Wholeness] | None:
        if completion_policy_for(self.settings, peer[0]) != "auto":
            return None
        with self._lock:
            if any(key in a.series for a in self._assocs.values()):
                return None  # still arriving on another association: its end examines it
        snapshot = self._refresh(key)
        if snapshot is None:
            return None
        cache = self._headers[key]
        return snapshot, assess([cache[n][1] for n in sorted(snapshot)])

    def _refresh(self, key: SeriesKey) -> dict[str, tuple[int, int]] | None:
        """Read the headers not yet cached; the folder's snapshot, or None once it is closed.

        The caller holds ``_exam_lock``.
        """
        folder = self.spool.incoming_dir(key)
        if not folder.is_dir():
            self._forget(key)
            return None
        snapshot = dcm_snapshot(folder)
        cache = self._headers.setdefault(key, {})
        for name, stamp in snapshot.items():
            if name not in cache or cache[name][0] != stamp:
                try:
                    cache[name] = (stamp, read_header(folder / name))
                except FileNotFoundError:  # closed by the timer meanwhile
                    self._forget(key)
                    return None
        for name in set(cache) - set(snapshot):
            del cache[name]
        return snapshot

    def _prefetch_loop(self) -> None:
        """Read headers while a series is still arriving, so the release has little left to do."""
        while not self.monitor.stopping(0):
            try:
                keys = {self._prefetch.get(timeout=0.5)}
            except queue.Empty:
                continue
            while not self._prefetch.empty():
                keys.add(self._prefetch.get_nowait())
            for key in keys:
                try:
                    with self._exam_lock:
                        self._refresh(key)
                except Exception:  # noqa: BLE001 - read again, and reported, at the release
                    log.debug("header prefetch failed", series_uid=key.series_uid)

    def _peer_busy(self, peer: Peer, ended: float, key: SeriesKey) -> str | None:
        """Why the peer may still be sending after its release, or None."""
        with self._lock:
            if any(t > ended for t in self._opened.get(peer, [])):
                return "the peer opened another association within the release grace period"
            for a in self._assocs.values():
                if a.peer == peer and (key in a.series or not a.series):
                    return "the peer holds another association that may still send this series"
        return None

    def _close(self, key: SeriesKey, closed_by: str, snapshot: dict[str, tuple[int, int]],
               verdict: Wholeness, **extra: Any) -> None:
        detail: dict[str, Any] = {"expected": verdict.expected, "basis": verdict.basis,
                                  "stacks": verdict.stacks, "slices": verdict.slices, **extra}
        series = self.monitor.close_now(key, closed_by, snapshot, **detail)
        if series is not None:
            self._forget(key)

    def _decline(self, key: SeriesKey, reason: str) -> None:
        """Record once per reason why a series was not closed early (an event of the series)."""
        if self._declined.get(key) == reason:
            return
        self._declined[key] = reason
        with self.spool.locked(key):
            folder = self.spool.incoming_dir(key)
            if folder.is_dir():
                append_event(folder, "not_closed_on_release", reason=reason)
        log.info("series left to the quiet timer", study_uid=key.study_uid,
                 series_uid=key.series_uid, reason=reason)

    def _prune(self) -> None:
        """Drop what is remembered about series no longer open (closed by the timer, say)."""
        with self._exam_lock:
            gone = [k for k in set(self._headers) | set(self._declined)
                    if not self.spool.incoming_dir(k).is_dir()]
            for key in gone:
                self._forget(key)
        with self._lock:
            for peer, keys in list(self._deferred.items()):
                keys -= set(gone)
                if not keys:
                    del self._deferred[peer]

    def _forget(self, key: SeriesKey) -> None:
        self._headers.pop(key, None)
        self._declined.pop(key, None)


def _peer(event: Event) -> Peer:
    requestor = event.assoc.requestor
    ae = requestor.ae_title
    if isinstance(ae, bytes):
        ae = ae.decode("ascii", errors="replace")
    return str(ae or "").strip(), str(requestor.address)

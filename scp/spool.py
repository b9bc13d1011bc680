"""The durable spool: every acknowledged instance is on disk before Success goes on the wire.

Layout under the spool root::

    tmp/                                   pynetdicom's chunked receive (same filesystem)
    incoming/<Study>/<Series>/             open series, still receiving
        <SOPInstance>.dcm                  file meta + the bytes as received
        <SOPInstance>.dcm.superseded-<ns>  an earlier, different copy of the same instance
        source.json                        calling AE, peer, first arrival; late-arrival link
        events.jsonl                       append-only series events (duplicates, late arrival)
    complete/<Study>/<Series>/v<N>/        immutable complete versions (renamed from incoming/)
        *.dcm, source.json, events.jsonl, summary.json, announced
        .importing                         held (flock) while an upload announces it
    uploads/<id>/                          an upload being checked (workers.upload); renamed
                                           into complete/ only once all of it passed

All state is derived from this tree, so a restarted node resumes where it stopped.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from kneenode.fsio import fsync_dir, write_json_atomic

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_VERSION_RE = re.compile(r"^v([0-9]+)$")


def is_valid_uid(uid: str) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters (safe as a path component too)."""
    return 0 < len(uid) <= 64 and bool(_UID_RE.match(uid))


#: Lock file of a complete version another process is still announcing (an upload).
IMPORTING = ".importing"


def hold_lock(path: Path) -> int | None:
    """Open ``path`` and take an exclusive flock without waiting: the descriptor, or None
    when another process holds it. The kernel drops the lock when the holder dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def being_imported(version_dir: Path) -> bool:
    """Whether another live process holds the version's ``.importing`` lock (it announces the
    version itself; a holder that died released the lock, and the monitor takes over)."""
    path = version_dir / IMPORTING
    if not path.exists():
        return False
    try:
        fd = hold_lock(path)
    except OSError:
        return False
    if fd is None:
        return True
    os.close(fd)
    return False


class StoreOutcome(Enum):
    """What happened to a received instance."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # same bytes already spooled: acknowledged, nothing rewritten
    REPLACED = "replaced"  # different bytes for the same SOP Instance UID: both kept, newest used


@dataclass(frozen=True)
class SeriesKey:
    """Identifies a series in the spool."""

    study_uid: str
    series_uid: str


def fsync_file(path: Path) -> None:
    """Flush a file's data to disk (a second descriptor on Linux syncs the same inode)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_event(folder: Path, event: str, **fields: Any) -> dict[str, Any]:
    """Append one JSON line to ``folder/events.jsonl`` (durably) and return the record."""
    record = {"time": time.time(), "event": event, **fields}
    with open(folder / "events.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return record


def read_events(folder: Path) -> list[dict[str, Any]]:
    """The events recorded for a series folder (empty if none)."""
    path = folder / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def same_bytes(a: Path, b: Path) -> bool:
    """Compare two files' contents (size first, then in 1 MiB blocks)."""
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ba, bb = fa.read(1 << 20), fb.read(1 << 20)
            if ba != bb:
                return False
            if not ba:
                return True


class Spool:
    """Paths, per-series locks and the atomic moves of the spool.

    One instance per SCP process. The C-STORE handlers and the completion monitor share it; a
    per-series lock makes "add an instance" and "close the series" mutually exclusive.
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.tmp = self.root / "tmp"
        self.incoming = self.root / "incoming"
        self.complete = self.root / "complete"
        for p in (self.tmp, self.incoming, self.complete):
            p.mkdir(parents=True, exist_ok=True)
        self._locks: dict[SeriesKey, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- paths ------------------------------------------------------------------------------
    def incoming_dir(self, key: SeriesKey) -> Path:
        return self.incoming / key.study_uid / key.series_uid

    def versions_dir(self, key: SeriesKey) -> Path:
        return self.complete / key.study_uid / key.series_uid

    def versions(self, key: SeriesKey) -> list[int]:
        """Numbers of the complete versions of a series, ascending."""
        folder = self.versions_dir(key)
        if not folder.is_dir():
            return []
        found = (_VERSION_RE.match(p.name) for p in folder.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def open_series(self) -> list[SeriesKey]:
        """Series currently receiving (folders under ``incoming/``)."""
        keys: list[SeriesKey] = []
        for study in sorted(p for p in self.incoming.iterdir() if p.is_dir()):
            keys.extend(SeriesKey(study.name, s.name) for s in sorted(study.iterdir()) if s.is_dir())
        return keys

    def complete_versions(self) -> list[tuple[SeriesKey, int, Path]]:
        """Every complete version folder in the spool."""
        out: list[tuple[SeriesKey, int, Path]] = []
        for study in sorted(p for p in self.complete.iterdir() if p.is_dir()):
            for series in sorted(p for p in study.iterdir() if p.is_dir()):
                key = SeriesKey(study.name, series.name)
                out.extend((key, v, series / f"v{v}") for v in self.versions(key))
        return out

    @contextmanager
    def locked(self, key: SeriesKey) -> Iterator[None]:
        """Hold the series lock (adding an instance vs. closing the series)."""
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    # -- capacity ---------------------------------------------------------------------------
    def has_room(self, min_free_bytes: int, min_free_percent: float) -> bool:
        """True while free space is above both watermarks."""
        usage = shutil.disk_usage(self.root)
        return usage.free >= min_free_bytes and usage.free * 100.0 >= min_free_percent * usage.total

    # -- storing ----------------------------------------------------------------------------
    def store(
        self, key: SeriesKey, sop_uid: str, received: Path, source: dict[str, Any]
    ) -> tuple[StoreOutcome, Path]:
        """Move a fully received temp file into the series folder, durably.

        ``received`` must be on the spool filesystem (``self.tmp``): the move is a rename.
        Returns what happened and the final path. On DUPLICATE the temp file is left for the
        caller's temp cleanup (pynetdicom deletes it after the handler returns).
        """
        if self.fsync:
            fsync_file(received)
        with self.locked(key):
            folder = self.incoming_dir(key)
            created = not folder.exists()
            if created:
                folder.mkdir(parents=True, exist_ok=True)
                try:
                    self._start_series(key, folder, source)
                except OSError:  # e.g. ENOSPC: leave no series folder without its source
                    shutil.rmtree(folder, ignore_errors=True)
                    raise
            target = folder / f"{sop_uid}.dcm"
            outcome = StoreOutcome.STORED
            if target.exists():
                if same_bytes(target, received):
                    return StoreOutcome.DUPLICATE, target
                superseded = target.with_name(f"{target.name}.superseded-{time.time_ns()}")
                os.rename(target, superseded)
                append_event(folder, "duplicate_different", sop_instance_uid=sop_uid,
                             kept=superseded.name)
                outcome = StoreOutcome.REPLACED
            os.rename(received, target)
            if self.fsync:
                fsync_dir(folder)
                if created:
                    fsync_dir(folder.parent)
                    fsync_dir(folder.parent.parent)
            return outcome, target

    def _start_series(self, key: SeriesKey, folder: Path, source: dict[str, Any]) -> None:
        """First instance of an open series: record its source and, if late, the link."""
        previous = self.versions(key)
        record = {**source, "first_received": time.time(), "previous_version": None}
        if previous:
            record["previous_version"] = previous[-1]
            append_event(folder, "late_arrival", previous_version=previous[-1],
                         previous_path=str(self.versions_dir(key) / f"v{previous[-1]}"))
        write_json_atomic(folder / "source.json", record)

    # -- closing ----------------------------------------------------------------------------
    def close_series(self, key: SeriesKey) -> tuple[int, Path]:
        """Turn the open series into the next complete version (one atomic rename).

        The caller holds :meth:`locked` for ``key``.
        """
        version = (self.versions(key) or [0])[-1] + 1
        dest_parent = self.versions_dir(key)
        dest_parent.mkdir(parents=True, exist_ok=True)
        dest = dest_parent / f"v{version}"
        os.rename(self.incoming_dir(key), dest)
        fsync_dir(dest_parent)
        fsync_dir(self.incoming_dir(key).parent)
        try:  # drop the empty study folder; a concurrent series of the same study keeps it
            self.incoming_dir(key).parent.rmdir()
        except OSError:
            pass
        return version, dest

    def last_activity(self, key: SeriesKey) -> float:
        """Wall time of the newest file in an open series (survives restarts)."""
        folder = self.incoming_dir(key)
        times = [p.stat().st_mtime for p in folder.iterdir() if p.is_file()]
        return max(times, default=folder.stat().st_mtime)

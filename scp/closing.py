"""Closing an open series into its next version, recording how and after what wait.

Both completion paths (the quiet timer in :mod:`scp.completion`, the release examination in
:mod:`scp.early`) close through :func:`close_version`, under the series lock. It writes
``closed.json`` into the folder before the one atomic rename, so the version carries its own
record (crash-safe: a crash before the rename leaves an open series whose record the next close
overwrites). A version that follows an *early* close says so in its events: that is the
measurable cost of closing before the sender was done.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from kneenode.fsio import write_json_atomic
from scp import metrics
from scp.spool import SeriesKey, Spool, append_event, read_events

CLOSED = "closed.json"
TIMER = "timer"
RELEASE_COUNT = "release+count"
RELEASE_GEOMETRY = "release+geometry"


def dcm_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Name -> (size, mtime_ns) of the instances in an open series: what an examination saw."""
    out: dict[str, tuple[int, int]] = {}
    for path in folder.glob("*.dcm"):
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        out[path.name] = (st.st_size, st.st_mtime_ns)
    return out


def read_closed(version_dir: Path) -> dict[str, Any]:
    """The close record of a version (empty for versions closed before records existed)."""
    try:
        return dict(json.loads((version_dir / CLOSED).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def close_version(spool: Spool, key: SeriesKey, closed_by: str, **detail: Any
                  ) -> tuple[int, Path]:
    """Record the close, then turn the open series into its next version. Caller holds the lock.

    ``detail`` (e.g. the expected count and its basis, the quiet period) goes into the record.
    """
    folder = spool.incoming_dir(key)
    snapshot = dcm_snapshot(folder)
    now = time.time()
    last = max((mtime for _, mtime in snapshot.values()), default=0) / 1e9 or now
    _note_after_early_close(spool, key, folder, len(snapshot))
    record = {"closed_by": closed_by, "closed_at": now, "last_instance": last,
              "wait_seconds": round(now - last, 3), "instances": len(snapshot), **detail}
    write_json_atomic(folder / CLOSED, record)
    version, dest = spool.close_series(key)
    metrics.SERIES_CLOSED.labels(closed_by=closed_by).inc()
    metrics.COMPLETION_WAIT.labels(closed_by=closed_by).observe(max(0.0, now - last))
    return version, dest


def _note_after_early_close(spool: Spool, key: SeriesKey, folder: Path, count: int) -> None:
    """If the previous version was closed early, record that more instances came after it."""
    versions = spool.versions(key)
    if not versions:
        return
    previous = read_closed(spool.versions_dir(key) / f"v{versions[-1]}")
    how = str(previous.get("closed_by") or TIMER)
    if how == TIMER:
        return
    if any(e.get("event") == "after_early_close" and e.get("previous_version") == versions[-1]
           for e in read_events(folder)):
        return  # recorded before a crash that stopped the rename
    append_event(folder, "after_early_close", previous_version=versions[-1],
                 previous_closed_by=how, more_instances=count,
                 message=f"v{versions[-1]} closed early by {how}, then received {count} more")
    metrics.EARLY_CLOSE_OVERRUNS.labels(closed_by=how).inc()
    metrics.EARLY_CLOSE_OVERRUN_INSTANCES.labels(closed_by=how).inc(count)

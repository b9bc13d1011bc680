"""The two ways to close a series (quiet timer, release) racing on one real spool folder.

In-process: a real :class:`scp.spool.Spool` on disk and the real monitor, driven by two threads
released together, so both paths hit the same series at the same moment, many times over.
"""

from __future__ import annotations

import random
import shutil
import threading
import time

import pydicom

from kneenode.settings import Settings
from scp.closing import RELEASE_GEOMETRY, dcm_snapshot, read_closed
from scp.completion import CompletionMonitor
from scp.spool import SeriesKey, Spool
from tests.support.mr import mr_series
from tests.support.procs import wait_for


def race(monitor: CompletionMonitor, key: SeriesKey, snapshot: dict, now: float,
         delay: float | None) -> None:
    """Run the timer's poll and the release close together; ``delay`` holds the release back
    (None: until the timer has closed the series, so the release comes second for sure)."""
    start = threading.Barrier(2)

    def timer() -> None:
        start.wait()
        monitor.poll_once(now=now)

    def release() -> None:
        start.wait()
        if delay is None:
            wait_for(lambda: bool(monitor.spool.versions(key)), 10, what="the timer's close")
        else:
            time.sleep(delay)  # jitter: which path runs first is the point of the test
        monitor.close_now(key, RELEASE_GEOMETRY, snapshot)

    threads = [threading.Thread(target=timer), threading.Thread(target=release)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_timer_and_release_racing_make_one_version_announced_once(tmp_path):
    spool = Spool(tmp_path / "spool", fsync=False)
    announced: list[tuple[str, int]] = []
    monitor = CompletionMonitor(spool, Settings(data_dir=tmp_path / "data"),
                                lambda s: announced.append((s.series_uid, s.version)))
    winners = set()
    for i in range(20):
        files = mr_series(tmp_path / f"src{i}", slices=5)
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        key = SeriesKey(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        for n, f in enumerate(files):
            received = spool.tmp / f"r{n}"
            shutil.copy(f, received)
            spool.store(key, f"1.2.3.{i}.{n}", received, {"calling_ae": "PACS"})
        far = time.time() + 3600  # every open series is past its quiet period
        delay = None if i % 3 == 0 else random.uniform(0, 0.01)
        race(monitor, key, dcm_snapshot(spool.incoming_dir(key)), far, delay)
        monitor.poll_once(now=far)  # finishes anything left unannounced
        assert spool.versions(key) == [1]
        assert announced.count((key.series_uid, 1)) == 1
        closed = read_closed(spool.versions_dir(key) / "v1")
        assert closed["instances"] == 5
        winners.add(closed["closed_by"])
    assert winners == {"timer", RELEASE_GEOMETRY}  # both paths came first at least once

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
         order: str) -> None:
    """Run the timer's poll and the release close together.

    ``order``: ``timer`` holds the release back until the timer has closed the series,
    ``release`` holds the timer back until the release has closed it (so each path is proven
    to come first, whatever the machine's load), ``race`` lets both go with a little jitter.
    """
    start = threading.Barrier(2)

    def closed() -> bool:
        return bool(monitor.spool.versions(key))

    def timer() -> None:
        start.wait()
        if order == "release":
            wait_for(closed, 60, what="the release's close")
        monitor.poll_once(now=now)

    def release() -> None:
        start.wait()
        if order == "timer":
            wait_for(closed, 60, what="the timer's close")
        elif order == "race":
            time.sleep(random.uniform(0, 0.01))  # jitter: either path may come first
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
    for i in range(20):
        files = mr_series(tmp_path / f"src{i}", slices=5)
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        key = SeriesKey(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        for n, f in enumerate(files):
            received = spool.tmp / f"r{n}"
            shutil.copy(f, received)
            spool.store(key, f"1.2.3.{i}.{n}", received, {"calling_ae": "PACS"})
        far = time.time() + 3600  # every open series is past its quiet period
        order = ("timer", "release", "race")[i % 3]
        race(monitor, key, dcm_snapshot(spool.incoming_dir(key)), far, order)
        monitor.poll_once(now=far)  # finishes anything left unannounced
        assert spool.versions(key) == [1]
        assert announced.count((key.series_uid, 1)) == 1
        closed = read_closed(spool.versions_dir(key) / "v1")
        assert closed["instances"] == 5
        if order != "race":
            assert closed["closed_by"] == (RELEASE_GEOMETRY if order == "release" else "timer")

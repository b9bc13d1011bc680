"""SIGKILL of ``kneenode serve``'s embedded redis at every stage of a job and between a series'
completion and its hand-off: every job still ends ``done`` and its results reach the DCMTK
storescp sink exactly once.

Real processes throughout: storescu sends, serve (embedded redis with ``appendfsync always``,
SCP, workers) processes, storescp (``+uf``: one file per received instance) counts. The fast
gated chain (:mod:`tests.faults.gated_chain`) holds a job in ``running:<stage>`` until the test
has killed redis; the gate is opened at once, so the stage finishes and commits while redis is
still down or restarting (the bookkeeping must retry, not hang or time out). One test runs the
node's real chain (phantom model) with kills during segment and deliver.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from pipeline.phantom import make_phantom, write_phantom
from tests.faults.gated_chain import STAGES, open_gates
from tests.faults.served import (
    job_store,
    jobs_of,
    kill_redis,
    serve_config,
    serve_info,
    start_sink,
    wait_redis_restarted,
)
from tests.support.dcmtk import storescu
from tests.support.mr import mr_series
from tests.support.procs import wait_for
from workers.jobstate import JobStore

pytestmark = pytest.mark.slow


def _uids(files: list[Path]) -> tuple[str, str]:
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def _state(store: JobStore, series_uid: str) -> str:
    jobs = jobs_of(store, series_uid)
    return jobs[0]["state"] if jobs else ""


def _received_sops(files: list[Path]) -> list[str]:
    return sorted(str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files)


def _assert_one_done_job(store: JobStore, series_uid: str, sent: int) -> dict:
    wait_for(lambda: "done" in [e["kind"] for e in store.events(jobs_of(store, series_uid)[0]["id"])],
             30, what="the job's done event")  # written just after the state
    (job,) = jobs_of(store, series_uid)  # exactly one job for the series
    assert job["state"] == "done", job
    assert job["error"] is None  # no stale error from the faults (their history is in events)
    assert len(list(Path(job["series_path"]).glob("*.dcm"))) == sent  # nothing acknowledged lost
    kinds = [e["kind"] for e in store.events(job["id"])]
    assert "failed" not in kinds and kinds.count("done") == 1, kinds
    return job


def test_redis_killed_at_every_stage_and_before_hand_off(node_factory, tmp_path: Path) -> None:
    sink = start_sink(tmp_path)
    try:
        node = node_factory(serve_config(sink), command="serve")
        files = mr_series(tmp_path / "knee", slices=12)
        _, series_uid = _uids(files)
        assert storescu(node.port, files).returncode == 0
        store = job_store(node)
        for stage, _ in STAGES:
            wait_for(lambda s=stage: _state(store, series_uid) == f"running:{s}", 120,
                     what=f"the job to run {stage}")
            old = kill_redis(node)
            open_gates(node.data_dir, stage)  # the stage ends and commits while redis is down
            wait_redis_restarted(node, old)
        wait_for(lambda: _state(store, series_uid) in ("done", "failed"), 120, what="the job")
        job = _assert_one_done_job(store, series_uid, len(files))
        outbox = json.loads((Path(job["job_dir"]) / "outbox.json").read_text())
        (entries,) = outbox["destinations"].values()
        assert len(entries) == 3 and all(e["state"] == "sent" for e in entries.values())
        first = sink.received()
        assert len(first) == 3 and len(set(_received_sops(first))) == 3  # once each

        # Around completion and hand-off: redis killed again as soon as it is back, until the
        # series is complete on disk, and once more the moment it is.
        more = mr_series(tmp_path / "knee2", slices=12, seed=1)
        study2, series2 = _uids(more)
        assert storescu(node.port, more).returncode == 0
        complete = node.spool / "complete" / study2 / series2
        while not complete.exists():
            old = kill_redis(node)
            wait_for(lambda o=old: complete.exists() or serve_info(node).get("redis_pid")
                     not in (None, o), 60, interval=0.005, what="completion or a new redis")
            if not complete.exists():
                continue
            wait_redis_restarted(node, old)
        old = kill_redis(node)
        wait_redis_restarted(node, old)
        wait_for(lambda: _state(store, series2) in ("done", "failed"), 120, what="second job")
        job2 = _assert_one_done_job(store, series2, len(more))
        marker = complete / "v1" / "announced"
        wait_for(marker.exists, 30, what="the announced marker")
        assert json.loads(marker.read_text())["job_id"] == job2["id"]
        received = sink.received()
        assert len(received) == 6 and len(set(_received_sops(received))) == 6
        assert serve_info(node)["pid"] == node.proc.pid  # the node itself never went down
    finally:
        sink.stop()


def test_real_chain_survives_redis_kills(node_factory, tmp_path: Path) -> None:
    """The node's own chain (phantom model on CPU): redis killed during segment and deliver."""
    sink = start_sink(tmp_path)
    try:
        config = serve_config(sink, chain="workers.analysis:node_chain")
        node = node_factory(config, command="serve")
        paths = write_phantom(make_phantom(11, "small"), tmp_path / "phantom")
        _, series_uid = _uids(paths.dicom_files)
        assert storescu(node.port, paths.dicom_files, aet="MRSCANNER").returncode == 0
        store = job_store(node)
        for stage in ("segment", "deliver"):
            wait_for(lambda s=stage: _state(store, series_uid) in (f"running:{s}", "done",
                                                                   "failed"),
                     600, interval=0.01, what=f"the real chain to reach {stage}")
            assert _state(store, series_uid) == f"running:{stage}"
            old = kill_redis(node)
            wait_redis_restarted(node, old)
        wait_for(lambda: _state(store, series_uid) in ("done", "failed"), 600, what="the job")
        job = _assert_one_done_job(store, series_uid, len(paths.dicom_files))
        outbox = json.loads((Path(job["job_dir"]) / "outbox.json").read_text())
        (entries,) = outbox["destinations"].values()
        received = sink.received()
        assert len(received) == len(entries) >= 4  # SEG, SR, overlay slices, PDF: once each
        assert _received_sops(received) == sorted(entries)
    finally:
        sink.stop()

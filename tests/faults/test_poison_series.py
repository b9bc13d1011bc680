"""One bad series never stops completion: an MR instance whose Columns element has a corrupted
length, then a valid series. The valid one completes and is processed; the bad one is handed
off once, ignored with INVALID_FORMAT and the reason; a restart changes neither.

The end-to-end test uses real processes (storescu -> ``kneenode serve`` -> storescp sink). The
isolation tests below drive :class:`scp.completion.CompletionMonitor` over a real spool with a
hand-off (the plug-in the monitor is given) that fails for one series only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from kneenode.settings import Settings
from scp.announce import CompletedSeries
from scp.completion import ANNOUNCED, CompletionMonitor
from scp.spool import SeriesKey, Spool
from scp.summary import summarize_series
from tests.faults.gated_chain import open_gates
from tests.faults.served import job_store, jobs_of, serve_config, start_sink
from tests.support.dcmtk import storescu
from tests.support.mr import mr_series
from tests.support.procs import wait_for

COLUMNS = Tag(0x0028, 0x0011)


def corrupt_columns(path: Path) -> None:
    """Rewrite Columns (US, one value) as a raw 6-byte element: pydicom reads three values."""
    ds = pydicom.dcmread(path)
    ds[COLUMNS] = RawDataElement(COLUMNS, "US", 6, b"\x20\x00\x20\x00\x20\x00", 0, False, True)
    ds.save_as(path)
    assert len(pydicom.dcmread(path).Columns) == 3


def _series_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


def test_summary_names_the_malformed_element(tmp_path: Path) -> None:
    files = mr_series(tmp_path / "s", slices=4)
    corrupt_columns(files[2])
    summary = summarize_series(tmp_path / "s")
    assert summary["geometry"]["consistent"] is False and summary["geometry"]["malformed"]
    assert summary["invalid"].startswith("malformed Columns in instance ")
    assert "[32, 32, 32] is not one integer" in summary["invalid"]
    assert summary["instance_count"] == 4 and summary["modality"] == "MR"
    good = summarize_series(mr_series(tmp_path / "g", slices=4)[0].parent)
    assert good["invalid"] is None and good["geometry"]["consistent"] is True


@pytest.mark.slow
def test_bad_series_recorded_valid_series_processed_restart_keeps_both(
        node_factory, tmp_path: Path) -> None:
    sink = start_sink(tmp_path)
    try:
        node = node_factory(serve_config(sink), command="serve", start=False)
        open_gates(node.data_dir)
        node.start()
        bad = mr_series(tmp_path / "bad", slices=6, seed=3)
        corrupt_columns(bad[3])
        sent = storescu(node.port, bad)
        assert sent.returncode == 0 and sent.stderr.count("Received Store Response (Success)") == 6
        good = mr_series(tmp_path / "good", slices=12)
        assert storescu(node.port, good).returncode == 0
        store = job_store(node)
        bad_uid, good_uid = _series_uid(bad[0]), _series_uid(good[0])
        wait_for(lambda: [j["state"] for j in jobs_of(store, good_uid)] == ["done"], 120,
                 what="the valid series' job to finish")
        wait_for(lambda: [j["state"] for j in jobs_of(store, bad_uid)] == ["ignored"], 30,
                 what="the bad series' job to be ignored")
        (bad_job,) = jobs_of(store, bad_uid)
        assert bad_job["state"] == "ignored"
        assert bad_job["error"]["code"] == "INVALID_FORMAT"
        assert "malformed Columns" in bad_job["reason"]
        assert len(list(Path(bad_job["series_path"]).glob("*.dcm"))) == 6  # nothing lost
        assert len(sink.received()) == 3  # the valid series' results, once
        assert "series completion step failed" not in node.log()  # never retried
        before = {j["id"]: j["state"] for j in store.list_jobs()}

        node.stop()
        offset = len(node.log())
        node.start()
        wait_for(lambda: "hand-offs checked" in node.log()[offset:], 60,
                 what="the restarted node's first reconciliation")
        store = job_store(node)
        assert {j["id"]: j["state"] for j in store.list_jobs()} == before
        marker = json.loads((Path(bad_job["series_path"]) / ANNOUNCED).read_text())
        assert marker["job_id"] == bad_job["id"]
        assert len(sink.received()) == 3
        assert "series completion step failed" not in node.log()
    finally:
        sink.stop()


def _open_series(spool: Spool, root: Path, name: str, slices: int) -> SeriesKey:
    files = mr_series(root / name, slices=slices)
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    key = SeriesKey(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
    for f in files:
        tmp = spool.tmp / f.name
        tmp.write_bytes(f.read_bytes())
        spool.store(key, str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID), tmp,
                    {"calling_ae": "PACS"})
    return key


def test_one_failing_hand_off_does_not_block_the_others(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", fsync=False)
    settings = Settings(data_dir=tmp_path)
    bad = _open_series(spool, tmp_path, "a", 3)
    good = _open_series(spool, tmp_path, "b", 3)
    calls: list[str] = []

    def hand_off(series: CompletedSeries) -> str:
        calls.append(series.series_uid)
        if series.series_uid == bad.series_uid:
            raise ConnectionError("jobs layer down for this one (test fault)")
        return "job-" + series.series_uid[-4:]

    monitor = CompletionMonitor(spool, settings, hand_off)
    t0 = monitor.started + settings.completion.quiet_seconds + 1
    announced = monitor.poll_once(now=t0)
    assert [s.series_uid for s in announced] == [good.series_uid]
    assert (spool.versions_dir(good) / "v1" / ANNOUNCED).exists()
    assert not (spool.versions_dir(bad) / "v1" / ANNOUNCED).exists()
    # The failed one backs off alone: the next poll does not try it again at once ...
    assert monitor.poll_once(now=t0 + 0.01) == [] and calls.count(bad.series_uid) == 1
    # ... and a later one does, and announces it once it succeeds.
    calls.clear()
    monitor.on_complete = lambda s: "job-late"
    (late,) = monitor.poll_once(now=t0 + 120)
    assert late.series_uid == bad.series_uid
    assert json.loads((late.path / ANNOUNCED).read_text())["job_id"] == "job-late"


def test_summary_that_raises_is_recorded_once(tmp_path: Path, monkeypatch) -> None:
    """The header fault no longer raises for real (the summary handles malformed values), so
    a summary failure is injected here: ``summarize_series`` raises for one series."""
    from scp import completion

    spool = Spool(tmp_path / "spool", fsync=False)
    settings = Settings(data_dir=tmp_path)
    bad = _open_series(spool, tmp_path, "a", 3)
    good = _open_series(spool, tmp_path, "b", 3)
    real = completion.summarize_series

    def flaky(folder: Path, *args: object) -> dict:
        if folder.parent.name == bad.series_uid:
            raise TypeError("int() argument must be ... not 'list' (test fault)")
        return real(folder, *args)

    monkeypatch.setattr(completion, "summarize_series", flaky)
    handed: list[CompletedSeries] = []
    monitor = CompletionMonitor(spool, settings, lambda s: handed.append(s) or "job")
    monitor.poll_once(now=monitor.started + settings.completion.quiet_seconds + 1)
    by_uid = {s.series_uid: s for s in handed}
    assert set(by_uid) == {bad.series_uid, good.series_uid}
    assert "summary could not be built: TypeError" in by_uid[bad.series_uid].summary["invalid"]
    assert by_uid[good.series_uid].summary["invalid"] is None
    assert monitor.poll_once(now=monitor.started + 600) == [] and len(handed) == 2

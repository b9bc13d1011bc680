"""The ``history`` stage: what a finished job records, read from the series' own DICOM header
(pseudonym of Patient ID + Issuer, dates, laterality), and a real job through the worker
cluster whose record appears with the right pseudonym, side and model."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from kneenode.fsio import write_json_atomic
from kneenode.history import model_key, open_history, read_patient_header
from kneenode.settings import Settings
from pipeline.results import update_results
from tests.support.mr import mr_series
from tests.workers.chains import DEMO_CARD
from workers.recording import HISTORY_STAGE, OUTCOME_FILE, record_history
from workers.stages import StageContext, fresh_work_dir

NAME = "DOE^JANE"


def _job(root: Path, settings: Settings, job_id: str, header: dict[str, Any], *,
         side: str | None = "left", thickness: float = 2.0, decision: str | None = None
         ) -> StageContext:
    """A finished job's folder: a real DICOM series, results.json, config.json."""
    series = root / job_id / "series"
    files = mr_series(series, slices=3, rows=8, columns=8, header={"PatientName": NAME, **header})
    job_dir = root / job_id / "job"
    hdr = read_patient_header(files[0])
    update_results(job_dir, {"study_uid": hdr.study_uid, "series_uid": hdr.series_uid,
                             "model": DEMO_CARD, "side": side,
                             "med_wb_fem_cart_mm_mean": thickness})
    write_json_atomic(job_dir / "config.json", {"profile": "research"})
    if decision:
        write_json_atomic(job_dir / "review.json", {"decision": decision})
    return StageContext(job_id=job_id, job_dir=job_dir, series_path=series,
                        work_dir=fresh_work_dir(job_dir, HISTORY_STAGE),
                        summary={"version": 1}, settings=settings)


def _recorded(ctx: StageContext) -> dict[str, Any]:
    return json.loads((ctx.work_dir / OUTCOME_FILE).read_text())


def test_two_patients_with_one_name_are_never_mixed(backend_settings, tmp_path):
    a = _job(tmp_path, backend_settings, "ja", {"PatientID": "111", "IssuerOfPatientID": "H"})
    b = _job(tmp_path, backend_settings, "jb", {"PatientID": "222", "IssuerOfPatientID": "H"})
    for ctx in (a, b):
        record_history(ctx)
    pa, pb = _recorded(a)["pseudonym"], _recorded(b)["pseudonym"]
    assert pa != pb
    with open_history(backend_settings) as store:
        assert pa == store.pseudonym("111", "H") and pb == store.pseudonym("222", "H")
        assert [e.job_id for e in store.exams(pa, "left")] == ["ja"]
        assert [e.job_id for e in store.exams(pb, "left")] == ["jb"]
        assert NAME not in json.dumps([e.results for e in store.all_exams()])


def test_one_patient_id_from_two_issuers_is_two_patients(backend_settings, tmp_path):
    a = _job(tmp_path, backend_settings, "ja", {"PatientID": "111", "IssuerOfPatientID": "H1"})
    b = _job(tmp_path, backend_settings, "jb", {"PatientID": "111", "IssuerOfPatientID": "H2"})
    for ctx in (a, b):
        record_history(ctx)
    assert _recorded(a)["pseudonym"] != _recorded(b)["pseudonym"]


def test_the_record_carries_side_dates_profile_model_and_qc_decision(backend_settings, tmp_path):
    header = {"PatientID": "111", "StudyDate": "20250314", "AcquisitionDate": "20250315",
              "Laterality": "R"}
    left = _job(tmp_path, backend_settings, "jl", header, side="left", decision="released")
    unknown = _job(tmp_path, backend_settings, "jr", {**header, "StudyDate": "20260101"},
                   side=None)  # quantify found no side: the header's Laterality R
    for ctx in (left, unknown):
        record_history(ctx)
    with open_history(backend_settings) as store:
        p = store.pseudonym("111", "")
        exam = store.get("jl")
        assert exam.pseudonym == p and exam.side == "left" and exam.laterality == "R"
        assert exam.study_date == date(2025, 3, 14) and exam.acquisition_date == date(2025, 3, 15)
        assert exam.profile == "research" and exam.model_key == model_key(DEMO_CARD)
        assert exam.qc_decision == "released" and exam.series_version == 1
        assert [e.job_id for e in store.exams(p, "right")] == ["jr"]
        assert [e.job_id for e in store.exams(p, "left")] == ["jl"]


def test_no_patient_id_or_history_off_records_nothing(tmp_path):
    on = Settings(data_dir=tmp_path / "data")
    anonymous = _job(tmp_path, on, "ja", {"PatientID": ""})
    record_history(anonymous)
    assert _recorded(anonymous)["recorded"] is False
    assert "no Patient ID" in _recorded(anonymous)["reason"]
    off = Settings(data_dir=tmp_path / "data", history={"enabled": False})
    ctx = _job(tmp_path, off, "jb", {"PatientID": "111"})
    record_history(ctx)
    assert _recorded(ctx) == {"recorded": False, "reason": "history.enabled is off"}
    with open_history(on) as store:
        assert store.all_exams(include_superseded=True) == []


@pytest.mark.slow
def test_a_finished_job_of_the_worker_cluster_is_recorded(cluster_factory, tmp_path):
    """Real redis and worker processes: a job that ends done is in the history with its
    patient's pseudonym, side and model; a job that fails is not."""
    c = cluster_factory(chain="tests.workers.chains:history_chain")
    jobs = {}
    for name, side, behaviour, pid in (("done-left", "left", {}, "P-1"),
                                       ("done-right", "right", {}, "P-1"),
                                       ("failed", "left", {"measure": "permanent"}, "P-2")):
        series = c.series(behaviour, test_side=side)
        mr_series(series.path, slices=3, rows=8, columns=8,
                  series_uid=series.series_uid, header={"PatientID": pid,
                                                        "IssuerOfPatientID": "HOSP",
                                                        "PatientName": NAME})
        jobs[name] = c.creator.create(series)
    c.start_workers()
    for name, job_id in jobs.items():
        job = c.wait(job_id, {"done", "failed"})
        assert job["state"] == ("failed" if name == "failed" else "done"), job
    with open_history(c.settings) as store:
        p1, p2 = store.pseudonym("P-1", "HOSP"), store.pseudonym("P-2", "HOSP")
        left, right = store.exams(p1, "left"), store.exams(p1, "right")
        assert [e.job_id for e in left] == [jobs["done-left"]]
        assert [e.job_id for e in right] == [jobs["done-right"]]
        assert left[0].model_key == model_key(DEMO_CARD) == "kneenode-test-model@7.1#" + "c" * 16
        assert left[0].study_date == date(2026, 1, 1)  # mr_series' StudyDate
        assert left[0].measurements == {"med_wb_fem_cart_mm_mean": 2.0, "femur_ml": 61.25}
        assert store.exams(p2, "left") == [] and store.get(jobs["failed"]) is None


LOG_SCRIPT = """
import sys
from pathlib import Path
from kneenode.logs import configure_logging
from kneenode.settings import LoggingSettings, Settings
from tests.history.test_recording import _job
from workers.recording import record_history

configure_logging(LoggingSettings(level="DEBUG"))
root = Path(sys.argv[1])
settings = Settings(data_dir=root / "data")
record_history(_job(root, settings, "jl", {"PatientID": "PID-77431", "IssuerOfPatientID": "HX"}))
record_history(_job(root, settings, "jn", {"PatientID": ""}))
"""


def test_the_logs_never_show_the_patient_id_or_name(tmp_path):
    from tests.support.node import REPO, node_env

    run = subprocess.run([sys.executable, "-c", LOG_SCRIPT, str(tmp_path)], cwd=REPO,
                         env=node_env(), capture_output=True, text=True, timeout=300, check=False)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "exam recorded in the history" in out and "exam not recorded" in out
    assert "PID-77431" not in out and "DOE" not in out and "HX" not in out

"""End to end: a follow-up knee arrives at ``kneenode serve``; the node finds the baseline in a real
Orthanc (C-FIND), has it C-MOVEd to itself, processes it with the same profile and model as a
prior job (not sent anywhere), records it in the history, and the follow-up's results carry the
change against the phantom's known loss.

Orthanc also holds the same patient's other knee (newer than the baseline) and a left knee of
another patient with the same name (newer still): neither is retrieved. The history already
holds the baseline measured by another model version: it is retrieved and processed again, and
only the new measurement is compared.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pydicom

from kneenode.history import ExamRecord, open_history, read_patient_header
from kneenode.orthanc import start_orthanc
from kneenode.settings import Settings
from pipeline.encode.pdf import pdf_document
from pipeline.encode.sr_change import read_sr_change
from pipeline.phantom import make_phantom, write_followup_pair, write_phantom
from tests.priors.exams import write_exam
from tests.support.dcmtk import storescu
from tests.support.procs import free_port, wait_for
from workers.broker import make_client
from workers.jobstate import JobStore

SEED = 5
LOSS_TOLERANCE_MM = 0.1


def serve_config(pacs_port: int, *, destinations: list[dict[str, Any]] | None = None,
                 **priors: Any) -> dict[str, Any]:
    """``kneenode serve`` on CPU whose route ``followup`` (calling AE MRSCANNER) looks up
    priors in the PACS on ``pacs_port``."""
    return {
        "completion": {"quiet_seconds": 1, "poll_seconds": 0.2},
        "jobs": {"http_port": free_port(), "gpu_devices": ["cpu"], "optional_stages": [],
                 "poll_ms": 200},
        "routes": [{
            "name": "followup", "calling_ae": ["MRSCANNER"],
            "destinations": destinations or [],
            "priors": {"enabled": True, "pacs": {"ae_title": priors.pop("ae_title", "ORTHANC"),
                                                 "host": "127.0.0.1", "port": pacs_port},
                       "max_priors": 2, "find_timeout_s": 30, "retrieve_timeout_s": 300,
                       "wait_s": 1200, **priors},
        }],
    }


def job_store(node: Any) -> JobStore:
    serve = json.loads((node.data_dir / "serve.json").read_text())
    return JobStore(make_client(serve["redis_url"]), "kneenode")


def job_of(store: JobStore, series_uid: str) -> dict[str, Any]:
    jobs = [j for j in store.list_jobs(limit=500) if j.get("series_uid") == series_uid]
    return jobs[0] if jobs else {}


def _old_model_record(settings: Settings, baseline: Path) -> None:
    """The baseline in the history as measured by an older model version (fake numbers)."""
    header = read_patient_header(baseline)
    with open_history(settings) as history:
        history.record(ExamRecord(
            job_id="old-model-job", study_uid=header.study_uid, series_uid=header.series_uid,
            pseudonym=history.pseudonym(header.patient_id, header.issuer), side="left",
            study_date=header.study_date, model_name="kneenode phantom demo",
            model_version="0.0-old", model_checksum="0" * 64,
            results={"side": "left", "med_tib_cart_mm_mean": 9.9}))


def test_followup_gets_the_change_since_the_baseline(node_factory, tmp_path: Path) -> None:
    pair = write_followup_pair(tmp_path / "pair", seed=SEED, preset="small", side="left")
    base_files, follow_files = list(pair.baseline.dicom_files), list(pair.followup.dicom_files)
    base = pydicom.dcmread(base_files[0], stop_before_pixels=True)
    follow = pydicom.dcmread(follow_files[0], stop_before_pixels=True)
    right = write_phantom(make_phantom(SEED + 1, "small", side="right"), tmp_path / "right")
    other_knee = write_exam(list(right.dicom_files), tmp_path / "other_knee",
                            patient_id=str(base.PatientID), name=str(base.PatientName),
                            study_date="20260601", issuer="")
    same_name = write_exam(base_files, tmp_path / "same_name", patient_id="SOMEONE-ELSE",
                           name=str(base.PatientName), study_date="20260901", issuer="")

    node = node_factory(None, command="serve", start=False)
    orthanc = start_orthanc(tmp_path / "orthanc", modalities={
        "kneenode": ["KNEENODE", "127.0.0.1", node.port]})
    try:
        for files in (base_files, other_knee.files, same_name.files):
            assert storescu(orthanc.dicom_port, files, aet="KNEENODE",
                            aec="ORTHANC").returncode == 0
        node.config = serve_config(orthanc.dicom_port, destinations=[
            {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}])
        _old_model_record(Settings(data_dir=node.data_dir), pair.baseline.dicom_dir)
        node.start()
        store = job_store(node)
        assert storescu(node.port, follow_files, aet="MRSCANNER").returncode == 0

        def current() -> dict[str, Any]:
            return job_of(store, str(follow.SeriesInstanceUID))

        wait_for(lambda: current().get("state") in ("done", "failed", "ignored"), 1500,
                 interval=1, what="the follow-up's job to end")
        job = current()
        assert job["state"] == "done", (job, store.events(job.get("id", "")))
        assert "compare" in job["chain"] and job["chain"].index("compare") < \
            job["chain"].index("encode")

        # exactly one prior job: the baseline, with the current job's profile and model
        priors = [j for j in store.list_jobs(limit=500) if j.get("prior_of") == job["id"]]
        assert [p["series_uid"] for p in priors] == [str(base.SeriesInstanceUID)], priors
        prior = priors[0]
        assert prior["state"] == "done", (prior, store.events(prior["id"]))
        assert prior["profile"] == job["profile"]
        assert prior["config"]["models"] == job["config"]["models"]
        assert not {"encode", "verify", "deliver", "compare"} & set(prior["chain"])
        assert "history" in prior["chain"]
        lookup = json.loads((Path(job["job_dir"]) / "priors" / "lookup.json").read_text())
        assert any("right knee" in w for w in lookup["passed_over"]), lookup
        assert str(same_name.series_uid) not in json.dumps(lookup)

        # the prior's results stay on the node: Orthanc got results for the follow-up only
        modalities = {s["Modality"] for s in orthanc.series_of_study(str(base.StudyInstanceUID))}
        assert modalities == {"MR"}, modalities
        wait_for(lambda: {"SEG", "SR"} <= {s["Modality"] for s in orthanc.series_of_study(
            str(follow.StudyInstanceUID))}, 120, what="the follow-up's results in Orthanc")

        # the change: against the new measurement of the baseline, never the old model's
        results = json.loads((Path(job["job_dir"]) / "results.json").read_text())
        change = results["change"]
        assert change["status"] == "compared", change
        assert change["prior"]["job_id"] == prior["id"]
        assert change["prior"]["series_uid"] == str(base.SeriesInstanceUID)
        errors = {t["region"]: round(t["change_mm"] + pair.loss_mm[t["region"]], 3)
                  for t in change["thickness"] if t["change_mm"] is not None}
        print("change error per region (measured change + true loss, mm):", errors)
        (tmp_path / "errors.json").write_text(json.dumps(errors))
        assert set(errors) == set(pair.loss_mm), (errors, pair.loss_mm)
        assert all(abs(e) <= LOSS_TOLERANCE_MM for e in errors.values()), errors
        flagged = {t["region"] for t in change["thickness"] if t["flagged"]}
        assert flagged <= {r for r, loss in pair.loss_mm.items() if loss > 0}, flagged
        # compare ran before encode: the delivered SR carries the change against the prior
        sr_files = list((Path(job["job_dir"]) / "encode" / "sr").glob("*.dcm"))
        sr_change = read_sr_change(pydicom.dcmread(sr_files[0]))
        assert sr_change.get("interval_days") == change["interval_days"], sr_change
        assert set(sr_change["thickness"]) >= set(pair.loss_mm), sr_change
        events = [e["kind"] for e in store.events(job["id"])]
        assert {"priors_requested", "priors_lookup", "prior_received", "compare"} <= set(events)
        # the console's results page shows the same change (loopback without accounts: open)
        page = httpx.get(f"http://127.0.0.1:{node.config['jobs']['http_port']}/ui/jobs/"
                         f"{job['id']}/results", timeout=60).text
        shown = dict(re.findall(r'data-key="([a-z_]+):change_mm" data-value="([^"]*)"', page))
        assert {r: round(float(v), 6) for r, v in shown.items()} == {
            t["region"]: round(t["change_mm"], 6) for t in change["thickness"]}, shown
        assert page.count('class="flagged"') >= len(flagged)
        # the delivered PDF, kept for a look (docs/change-report-e2e.png is rendered from it)
        pdf = pdf_document(pydicom.dcmread(next((Path(job["job_dir"]) / "encode" / "pdf")
                                                .glob("*.dcm"))))
        (tmp_path / "report.pdf").write_bytes(pdf)
        print("change report PDF:", tmp_path / "report.pdf")
    finally:
        orthanc.stop()


def test_followup_with_cget(node_factory, tmp_path: Path) -> None:
    """The same flow with ``method = "get"``: the baseline comes back on the node's own C-GET
    association, is written into the spool by the io worker and completes on the quiet timer."""
    pair = write_followup_pair(tmp_path / "pair", seed=SEED + 10, preset="small", side="right")
    base = pydicom.dcmread(pair.baseline.dicom_files[0], stop_before_pixels=True)
    follow = pydicom.dcmread(pair.followup.dicom_files[0], stop_before_pixels=True)
    node = node_factory(None, command="serve", start=False)
    orthanc = start_orthanc(tmp_path / "orthanc", modalities={
        "kneenode": ["KNEENODE", "127.0.0.1", node.port]})
    try:
        assert storescu(orthanc.dicom_port, list(pair.baseline.dicom_files), aet="KNEENODE",
                        aec="ORTHANC").returncode == 0
        node.config = serve_config(orthanc.dicom_port, method="get")
        node.start()
        store = job_store(node)
        assert storescu(node.port, list(pair.followup.dicom_files), aet="MRSCANNER").returncode == 0
        wait_for(lambda: job_of(store, str(follow.SeriesInstanceUID)).get("state")
                 in ("done", "failed"), 1500, interval=1, what="the follow-up's job to end")
        job = job_of(store, str(follow.SeriesInstanceUID))
        assert job["state"] == "done", (job, store.events(job["id"]))
        prior = job_of(store, str(base.SeriesInstanceUID))
        assert prior.get("prior_of") == job["id"] and prior["state"] == "done", prior
        source = json.loads((Path(prior["series_path"]) / "source.json").read_text())
        assert source["retrieved_by"] == "C-GET"
        change = json.loads((Path(job["job_dir"]) / "results.json").read_text())["change"]
        assert change["status"] == "compared", change
        assert change["prior"]["series_uid"] == str(base.SeriesInstanceUID)
    finally:
        orthanc.stop()

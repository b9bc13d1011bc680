"""End to end: storescu -> ``kneenode serve`` -> SEG, SR, overlay series and PDF in a real Orthanc.

Orthanc is down when the results are first sent and starts 30 s later: delivery retries, and
everything arrives exactly once.
"""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pydicom

from kneenode.orthanc import start_orthanc
from pipeline.phantom import make_phantom, write_phantom
from tests.support.dcmtk import storescu
from tests.support.procs import free_port, wait_for
from workers.broker import make_client
from workers.jobstate import JobStore

RESULT_MODALITIES = {"SEG", "SR", "MR", "DOC"}  # MR: the colour overlay series (SC images)


def test_results_reach_orthanc_after_it_comes_up(node_factory, tmp_path: Path) -> None:
    dicom_port, http_port = free_port(), free_port()
    node = node_factory({
        "completion": {"quiet_seconds": 1, "poll_seconds": 0.2},
        "jobs": {"http_port": free_port(), "gpu_devices": ["cpu"], "optional_stages": [],
                 "poll_ms": 200},
        "delivery": {"destinations": [{"ae_title": "ORTHANC", "host": "127.0.0.1",
                                       "port": dicom_port}],
                     "backoff_min_s": 4, "backoff_max_s": 8, "timeout": 10},
    }, command="serve")
    paths = write_phantom(make_phantom(11, "small"), tmp_path / "phantom")
    study_uid = str(pydicom.dcmread(paths.dicom_files[0]).StudyInstanceUID)
    sent = time.monotonic()
    assert storescu(node.port, paths.dicom_files, aet="MRSCANNER").returncode == 0

    serve = json.loads((node.data_dir / "serve.json").read_text())
    store = JobStore(make_client(serve["redis_url"]), "kneenode")

    def job() -> dict:
        jobs = [j for j in store.list_jobs() if j.get("study_uid") == study_uid]
        return jobs[0] if jobs else {}

    wait_for(lambda: job().get("state") == "retry_wait" and job().get("stage") == "deliver",
             300, what="a failed first delivery (Orthanc is down)")
    assert job()["error"]["code"] == "SEND_FAILED"
    time.sleep(max(0.0, 30 - (time.monotonic() - sent)))
    orthanc = start_orthanc(tmp_path / "orthanc", dicom_port=dicom_port, http_port=http_port)
    try:
        wait_for(lambda: job().get("state") in ("done", "failed"), 240, what="the job to end")
        final = job()
        assert final["state"] == "done", final
        series = orthanc.series_of_study(study_uid)
        by_modality = {s["Modality"]: s for s in series}
        assert set(by_modality) == RESULT_MODALITIES, series
        assert by_modality["SEG"]["instances"] == 1 and by_modality["SR"]["instances"] == 1
        assert by_modality["DOC"]["instances"] == 1
        overlay = by_modality["MR"]
        assert overlay["instances"] == len(paths.dicom_files)  # one per source slice
        assert "overlay" in overlay["SeriesDescription"].lower()
        outbox = json.loads((Path(final["job_dir"]) / "outbox.json").read_text())
        entries = next(iter(outbox["destinations"].values())).values()
        assert all(e["state"] == "sent" for e in entries)
        stats = orthanc.get("/statistics")
        assert stats["CountInstances"] == len(entries)  # nothing twice, nothing missing
        events = [e["kind"] for e in store.events(final["id"])]
        assert events.count("retry") >= 1
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{serve['http_port']}/metrics").read()
        text = metrics.decode()
        assert f'kneenode_edge_instances_total{{outcome="stored"}} {len(paths.dicom_files)}.0' in text
        assert 'kneenode_jobs{state="done"} 1.0' in text
    finally:
        orthanc.stop()

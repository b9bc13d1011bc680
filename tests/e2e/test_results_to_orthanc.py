"""End to end: storescu -> ``kneenode serve`` -> SEG, SR, overlay series and PDF in a real Orthanc.

Classic series: Orthanc is down when the results are first sent and starts 30 s later: delivery
retries, and everything arrives exactly once. Enhanced MR: one multi-frame object per series
(single echo and two-echo qDESS) gets the same four result objects, referencing its frames.
"""

from __future__ import annotations

import io
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk

from kneenode.orthanc import start_orthanc
from pipeline.phantom import make_phantom, write_phantom
from tests.support.dcmtk import storescu
from tests.support.procs import free_port, wait_for
from workers.broker import make_client
from workers.jobstate import JobStore

RESULT_MODALITIES = {"SEG", "SR", "MR", "DOC"}  # MR: the colour overlay series (SC images)


def _serve_config(dicom_port: int) -> dict[str, Any]:
    """``kneenode serve`` on CPU, delivering to an Orthanc on ``dicom_port`` (retries soon)."""
    return {
        "completion": {"quiet_seconds": 1, "poll_seconds": 0.2},
        "jobs": {"http_port": free_port(), "gpu_devices": ["cpu"], "optional_stages": [],
                 "poll_ms": 200},
        "delivery": {"destinations": [{"ae_title": "ORTHANC", "host": "127.0.0.1",
                                       "port": dicom_port}],
                     "backoff_min_s": 4, "backoff_max_s": 8, "timeout": 10},
    }


def _job_store(node: Any) -> JobStore:
    serve = json.loads((node.data_dir / "serve.json").read_text())
    return JobStore(make_client(serve["redis_url"]), "kneenode")


def _job_of(store: JobStore, study_uid: str) -> dict:
    jobs = [j for j in store.list_jobs() if j.get("study_uid") == study_uid]
    return jobs[0] if jobs else {}


def test_results_reach_orthanc_after_it_comes_up(node_factory, tmp_path: Path) -> None:
    dicom_port, http_port = free_port(), free_port()
    node = node_factory(_serve_config(dicom_port), command="serve")
    paths = write_phantom(make_phantom(11, "small"), tmp_path / "phantom")
    study_uid = str(pydicom.dcmread(paths.dicom_files[0]).StudyInstanceUID)
    sent = time.monotonic()
    assert storescu(node.port, paths.dicom_files, aet="MRSCANNER").returncode == 0

    serve = json.loads((node.data_dir / "serve.json").read_text())
    store = _job_store(node)

    def job() -> dict:
        return _job_of(store, study_uid)

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


def test_enhanced_mr_results_reach_orthanc(node_factory, tmp_path: Path) -> None:
    """Two Enhanced MR studies (single echo; two-echo qDESS, both echoes as frames of one object)
    through storescu -> serve -> Orthanc: SEG, SR, overlay series and PDF for each; the SEG that
    Orthanc holds, read back by highdicom through its frame references, equals the job's label
    map voxel for voxel, and every reference names a frame of the first echo."""
    orthanc = start_orthanc(tmp_path / "orthanc", dicom_port=free_port(), http_port=free_port())
    try:
        node = node_factory(_serve_config(orthanc.dicom_port), command="serve")
        cases = {}
        for seed, qdess in ((12, False), (13, True)):
            ph = make_phantom(seed, "small", orientation="coronal", qdess=qdess)
            paths = write_phantom(ph, tmp_path / f"phantom-{seed}", enhanced=True)
            source = pydicom.dcmread(paths.dicom_files[0], stop_before_pixels=True)
            cases[str(source.StudyInstanceUID)] = (source, ph)
            assert storescu(node.port, paths.dicom_files, aet="MRSCANNER").returncode == 0
        store = _job_store(node)
        wait_for(lambda: all(_job_of(store, uid).get("state") in ("done", "failed")
                             for uid in cases), 600, interval=0.5, what="both jobs to end")
        for study_uid, (source, ph) in cases.items():
            final = _job_of(store, study_uid)
            assert final["state"] == "done", final
            by_modality = {s["Modality"]: s for s in orthanc.series_of_study(study_uid)}
            assert set(by_modality) == RESULT_MODALITIES, by_modality
            assert [by_modality[m]["instances"] for m in ("SEG", "SR", "DOC")] == [1, 1, 1]
            n = ph.grid.size[2]
            assert by_modality["MR"]["instances"] == n  # the overlay: one SC image per slice
            _check_seg_in_orthanc(orthanc, by_modality["SEG"], source, Path(final["job_dir"]), n)
    finally:
        orthanc.stop()


def _check_seg_in_orthanc(orthanc: Any, series: dict, source: pydicom.Dataset, job_dir: Path,
                          n: int) -> None:
    found = orthanc.post("/tools/find", {"Level": "Instance",
                                         "Query": {"SeriesInstanceUID": series["SeriesInstanceUID"]}})
    with urllib.request.urlopen(f"{orthanc.url}/instances/{found[0]}/file", timeout=30) as rsp:
        seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(rsp.read())))
    volume = json.loads((job_dir / "prepare" / "volume.json").read_text())
    assert volume["frames"] == list(range(1, n + 1))  # echo 1 (the reader's volume) is frames 1..n
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(job_dir / "segment" / "labels.nii.gz")))
    got = seg.get_pixels_by_source_frame(
        source_sop_instance_uid=source.SOPInstanceUID, source_frame_numbers=volume["frames"],
        segment_numbers=list(range(1, 10)), combine_segments=True, skip_overlap_checks=True)
    tissues = labels.copy()
    tissues[(tissues >= 11) & (tissues <= 15)] = 4  # the femoral cartilage segment (no subregions)
    assert labels.any() and np.array_equal(got, tissues)

"""One chain everywhere: ``kneenode analyze`` and the node (storescu -> ``kneenode serve``) write
the same results.json for the same phantom series, and the node never delivers a partial set.

The shape stage runs with the committed demo NSM at small fitting settings (seconds, not
minutes); segmentation uses one CPU thread in both so the two runs do the same arithmetic.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from pydicom import dcmread

from pipeline.phantom import make_phantom, write_phantom
from pipeline.results import comparable, validate_results
from tests.support.dcmtk import dcmtk_env, storescu
from tests.support.node import KNEENODE, Node
from tests.support.procs import free_port, port_open, start, stop, wait_for
from workers.broker import make_client
from workers.jobstate import JobStore

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "results.schema.json"
NSM_DEMO = Path(__file__).resolve().parents[2] / "models" / "nsm_demo"
SMALL_NSM = {"bone_cart_model": str(NSM_DEMO / "femur_bone_cart"),
             "bone_cart_bscore": str(NSM_DEMO / "bscore_bone_cart"), "device": "cpu",
             "iterations": 30, "points": 2000, "recon_resolution": 48,
             "mean_shape_resolution": 48, "icp_iterations": 20}


def _config(**extra: Any) -> dict[str, Any]:
    return {
        "completion": {"quiet_seconds": 1, "poll_seconds": 0.2},
        "jobs": {"http_port": free_port(), "gpu_devices": ["cpu"], "poll_ms": 200,
                 **extra.pop("jobs", {})},
        "segment": {"device": "cpu", "cpu_threads": 1},
        **extra,
    }


def _store(node: Node) -> JobStore:
    serve = json.loads((node.data_dir / "serve.json").read_text())
    return JobStore(make_client(serve["redis_url"]), "kneenode")


def _job(store: JobStore, study_uid: str) -> dict[str, Any]:
    jobs = [j for j in store.list_jobs() if j.get("study_uid") == study_uid]
    return jobs[0] if jobs else {}


def _validate_with_jsonschema(path: Path) -> None:
    """Validate against docs/results.schema.json with an independent validator (Debian's
    python3-jsonschema; the venv need not have it)."""
    code = ("import json, sys, jsonschema; jsonschema.Draft202012Validator("
            "json.load(open(sys.argv[2]))).validate(json.load(open(sys.argv[1])))")
    done = subprocess.run(["/usr/bin/python3", "-c", code, str(path), str(SCHEMA)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_analyze_and_the_node_write_equal_results(node_factory, tmp_path: Path) -> None:
    node = node_factory(_config(jobs={"optional_stages": ["shape"]}, nsm=SMALL_NSM),
                        command="serve")
    paths = write_phantom(make_phantom(11, "small"), tmp_path / "phantom")
    study_uid = str(dcmread(paths.dicom_files[0]).StudyInstanceUID)
    assert storescu(node.port, paths.dicom_files, aet="MRSCANNER").returncode == 0
    store = _store(node)
    wait_for(lambda: _job(store, study_uid).get("state") in ("done", "failed"), 600,
             what="the node's job to end")
    job = _job(store, study_uid)
    assert job["state"] == "done", job
    node_path = Path(job["job_dir"]) / "results.json"
    from_node = json.loads(node_path.read_text())

    out = tmp_path / "analyze"
    done = subprocess.run([KNEENODE, "--config", str(node.config_path), "analyze",
                           str(paths.dicom_dir), "--out", str(out)],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    from_analyze = json.loads((out / "results.json").read_text())

    assert from_node == validate_results(from_node) and from_analyze == validate_results(from_analyze)
    _validate_with_jsonschema(node_path)
    _validate_with_jsonschema(out / "results.json")
    assert from_node["bscore"] is not None and from_node["pat_cart_mm_mean"] is not None
    assert comparable(from_analyze) == comparable(from_node)
    assert (out / "results.csv").read_text() == (node_path.parent / "results.csv").read_text()


def _sink(root: Path) -> tuple[subprocess.Popen, Path, int]:
    port = free_port()
    received = root / "received"
    received.mkdir(parents=True)
    proc = start(["storescp", "-aet", "SINK", "-od", str(received), str(port)],
                 log=root / "storescp.log", env=dcmtk_env())
    wait_for(lambda: port_open(port), 20, what="storescp")
    return proc, received, port


def test_a_missing_output_fails_the_job_and_nothing_is_delivered(node_factory, tmp_path: Path) -> None:
    sink, received, port = _sink(tmp_path / "sink")
    try:
        node = node_factory(_config(
            jobs={"optional_stages": [], "chain": "tests.workers.chains:lossy_encode_chain"},
            delivery={"destinations": [{"ae_title": "SINK", "host": "127.0.0.1", "port": port}],
                      "timeout": 20}), command="serve")
        good = write_phantom(make_phantom(11, "small"), tmp_path / "good")
        lossy = write_phantom(make_phantom(12, "small"), tmp_path / "lossy")
        for path in lossy.dicom_files:
            ds = dcmread(path)
            ds.SeriesDescription = "SAG 3D DESS KNEE LOSSY"
            ds.save_as(path)
        studies = {name: str(dcmread(p.dicom_files[0]).StudyInstanceUID)
                   for name, p in (("good", good), ("lossy", lossy))}
        assert storescu(node.port, [*good.dicom_files, *lossy.dicom_files]).returncode == 0
        store = _store(node)
        wait_for(lambda: all(_job(store, s).get("state") in ("done", "failed")
                             for s in studies.values()), 600, what="both jobs to end")
        ok, bad = _job(store, studies["good"]), _job(store, studies["lossy"])
        # the sink works: the good series' SEG, SR, overlay images and PDF all arrived
        assert ok["state"] == "done", ok
        n_good = 3 + len(good.dicom_files)
        wait_for(lambda: len(list(received.iterdir())) >= n_good, 60, what="the good results")
        assert bad["state"] == "failed" and bad["error"]["code"] == "OUTPUT_MISSING", bad
        assert bad["error"]["message"] == \
            f"overlay: {len(lossy.dicom_files) - 1} frames, expected {len(lossy.dicom_files)}"
        assert "kneenode retry ID --from-stage encode" in bad["error"]["hint"]
        kinds = [(e["kind"], e.get("stage")) for e in store.events(bad["id"])]
        assert ("start", "verify") in kinds and ("start", "deliver") not in kinds
        received_studies = {dcmread(p, stop_before_pixels=True).StudyInstanceUID
                            for p in received.iterdir()}
        assert received_studies == {studies["good"]}  # nothing of the partial set
        assert len(list(received.iterdir())) == n_good
    finally:
        stop(sink)

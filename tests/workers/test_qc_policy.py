"""What a failed QC delivers: hold -> review -> release / discard (real ``kneenode serve``,
DCMTK storescu in, storescp as the PACS), and the ``pdf_only`` / ``deliver_flagged`` policies.

The failing input is a series the demo model was not made for (tests.support.mr: noise-like
content, no knee); the real chain runs on it: prepare, segment (demo model), qc, quantify, encode.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pydicom
import pytest

from kneenode.settings import Settings
from pipeline.encode.pdf import pdf_document
from tests.support.dcmtk import dcmtk_env, storescu
from tests.support.mr import mr_series
from tests.support.node import KNEENODE, node_env
from tests.support.procs import free_port, port_open, start, stop, wait_for
from workers.analysis import node_chain
from workers.broker import make_client
from workers.jobstate import JobStore
from workers.stages import StageContext, fresh_work_dir

KINDS = {"1.2.840.10008.5.1.4.1.1.66.4": "SEG", "1.2.840.10008.5.1.4.1.1.88.34": "SR",
         "1.2.840.10008.5.1.4.1.1.7": "OVERLAY", "1.2.840.10008.5.1.4.1.1.104.1": "PDF"}


def received(folder: Path) -> dict[str, dict[str, int]]:
    """study UID -> kind -> count of the instances storescp wrote."""
    out: dict[str, dict[str, int]] = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        kinds = out.setdefault(str(ds.StudyInstanceUID), {})
        kind = KINDS.get(str(ds.SOPClassUID), str(ds.SOPClassUID))
        kinds[kind] = kinds.get(kind, 0) + 1
    return out


def _cli(node, *args: str) -> subprocess.CompletedProcess[str]:
    env = node_env(KNEENODE_CONFIG=str(node.config_path))
    return subprocess.run([KNEENODE, *args], capture_output=True, text=True, env=env, timeout=120,
                          check=False)


def test_hold_puts_a_failed_job_in_review_release_delivers_discard_does_not(node_factory,
                                                                           tmp_path):
    sink, port = tmp_path / "pacs", free_port()
    sink.mkdir()
    pacs = start(["storescp", "-aet", "STORESCP", "-od", str(sink), str(port)],
                 log=tmp_path / "storescp.log", env=dcmtk_env())
    try:
        wait_for(lambda: port_open(port), 10, what="storescp")
        node = node_factory({
            "scp": {"allow_any": True},
            "completion": {"quiet_seconds": 1, "poll_seconds": 0.2},
            "jobs": {"http_port": free_port(), "gpu_devices": ["cpu"], "optional_stages": [],
                     "poll_ms": 200},
            "segment": {"device": "cpu", "cpu_threads": 1},
            "qc": {"on_fail": "hold"},
            "delivery": {"destinations": [{"ae_title": "STORESCP", "host": "127.0.0.1",
                                           "port": port}], "timeout": 10},
        }, command="serve")
        studies = {}
        for name in ("released", "discarded"):
            files = mr_series(tmp_path / name, slices=24, rows=40, columns=40,
                              seed=len(name))
            studies[name] = str(pydicom.dcmread(files[0]).StudyInstanceUID)
            assert storescu(node.port, files).returncode == 0
        serve = json.loads((node.data_dir / "serve.json").read_text())
        store = JobStore(make_client(serve["redis_url"]), "kneenode")

        def job(name: str) -> dict:
            jobs = [j for j in store.list_jobs() if j.get("study_uid") == studies[name]]
            return jobs[0] if jobs else {}

        for name in studies:
            wait_for(lambda n=name: job(n).get("state") in ("review", "done", "failed"), 400,
                     interval=0.5, what=f"job {name} to reach review")
            held = job(name)
            assert held["state"] == "review", held
            assert held["error"]["code"] == "QC_FAILED" and held["error"]["hint"]
            assert held["stage"] == "quantify" and held["qc"] == "fail"
            kinds = [e["kind"] for e in store.events(held["id"])]
            assert kinds[-2:] == ["qc", "review"]
            qc_event = next(e for e in store.events(held["id"]) if e["kind"] == "qc")
            assert qc_event["outcome"] == "fail" and qc_event["reasons"]
        assert received(sink) == {}  # nothing leaves the node while held

        done = _cli(node, "discard", job("discarded")["id"], "--operator", "dr-test")
        assert done.returncode == 0, done.stdout + done.stderr
        again = _cli(node, "discard", job("discarded")["id"])
        assert again.returncode != 0 and "not in review" in (again.stdout + again.stderr)
        released = _cli(node, "release", job("released")["id"], "--operator", "dr-test")
        assert released.returncode == 0, released.stdout + released.stderr
        wait_for(lambda: job("released").get("state") in ("done", "failed"), 400, interval=0.5,
                 what="the released job to finish")
        final = job("released")
        assert final["state"] == "done", final
        got = received(sink)
        assert set(got) == {studies["released"]}, got  # the discarded study: nothing
        assert got[studies["released"]]["SEG"] == 1 and got[studies["released"]]["PDF"] == 1
        assert got[studies["released"]]["SR"] == 1 and got[studies["released"]]["OVERLAY"] == 24
        discarded = job("discarded")
        assert discarded["state"] == "cancelled" and "discarded" in discarded["reason"]
        assert "deliver" not in discarded["stages"] and "quantify" not in discarded["stages"]
        decision = json.loads((Path(discarded["job_dir"]) / "review.json").read_text())
        assert decision["decision"] == "discarded" and decision["operator"] == "dr-test"
        # the delivered SR carries the failed outcome as its coded QC item
        sr = next(p for p in sink.iterdir()
                  if KINDS.get(str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID)) == "SR")
        from pipeline.encode.sr import read_sr_measurements

        assert read_sr_measurements(pydicom.dcmread(sr))["qc_outcome"] == "fail"
        # the results history: the released exam with its QC state, the discarded one not at all
        from kneenode.history import open_history

        assert final["stages"]["history"]["state"] == "done"
        with open_history(Settings(data_dir=node.data_dir)) as history:
            exam = history.get(final["id"])
            assert exam is not None and exam.qc_outcome == "fail"
            assert exam.qc_decision == "released" and exam.series_uid == final["series_uid"]
            assert exam.pseudonym == history.pseudonym("PHANTOM-0001", "")  # mr_series' ID
            assert history.get(discarded["id"]) is None
    finally:
        stop(pacs)


@pytest.mark.parametrize(("policy", "kinds"), [("pdf_only", {"pdf"}),
                                               ("deliver_flagged", {"seg", "sr", "overlay", "pdf"})])
def test_policy_decides_what_a_failed_result_encodes(tmp_path, policy, kinds):
    """The node's stage functions in order on one job folder (no queue needed for this)."""
    series = tmp_path / "series"
    mr_series(series, slices=24, rows=40, columns=40)
    settings = Settings(data_dir=tmp_path, segment={"device": "cpu", "cpu_threads": 1},
                        qc={"on_fail": policy})
    job = tmp_path / "job"
    for stage in node_chain(settings):
        if stage.name in ("shape", "compare", "deliver"):  # compare: only on priors routes
            continue
        stage.fn(StageContext(job_id="j", job_dir=job, series_path=series,
                              work_dir=fresh_work_dir(job, stage.name), summary={},
                              settings=settings))
    results = json.loads((job / "results.json").read_text())
    assert results["qc"]["outcome"] == "fail" and results["qc"]["policy"] == policy
    assert {p.parent.name for p in (job / "encode").glob("*/*.dcm")} == kinds
    pdf = next((job / "encode" / "pdf").glob("*.dcm"))

    from tests.pipeline.encode.test_report_layout import words

    text = " ".join(w[1] for w in words(pdf_document(pydicom.dcmread(pdf)), tmp_path))
    assert "QC FAILED - DO NOT USE THESE RESULTS" in text  # the reasons go with the report
    if "overlay" in kinds:
        overlay = pydicom.dcmread(next((job / "encode" / "overlay").glob("*.dcm")))
        assert "QC FAILED" in overlay.ImageComments

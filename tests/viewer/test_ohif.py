"""Our result objects open cleanly in stock OHIF 3.13.2, in a real (headless) chromium (issue 9).

One module-scoped run does all the work (1.5-2 minutes): a `small` phantom series goes into a real
Orthanc and, by storescu, into ``kneenode serve``, which segments it with the phantom demo model,
measures, encodes and delivers SEG, SR, overlay series and PDF into that Orthanc; check.mjs then
drives OHIF through the study (study list, MR, SEG, SR, overlay, PDF), plus two copies of it with
a deliberately broken SEG and SR that the same checks must reject, and the same phantom written
as one Enhanced MR object, processed by the same node (issue 13). The tests below only read
the report. See tests/viewer/harness.py for the processes and docs/viewer.md for the viewer bugs
the SR works around.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest

from pipeline.encode import read_sr_measurements
from pipeline.encode.sr_viewer import outlines_by_key
from pipeline.phantom import make_phantom, write_phantom
from tests.viewer.objects import ALL_STEPS

# Deadlines only (nothing here waits a fixed time): generous, the suite runs on loaded CPUs.
pytestmark = pytest.mark.timeout(1200)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ARTIFACTS = Path(os.environ.get("KNEENODE_VIEWER_ARTIFACTS", HERE / "artifacts"))


@pytest.fixture(scope="module")
def viewer_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("viewer")
    knee = make_phantom(11, "small", side="right", orientation="sagittal")
    phantom = write_phantom(knee, work / "phantom")
    enhanced = write_phantom(knee, work / "enhanced", enhanced=True)  # its own study
    shots = work / "screenshots"
    config = {"out": str(shots), "browser_timeout_s": 600,
              "source": [str(p) for p in phantom.dicom_files],
              "enhanced_source": [str(p) for p in enhanced.dicom_files]}
    (work / "config.json").write_text(json.dumps(config))
    proc = subprocess.run(
        # Own network namespace (only loopback) and PID namespace (whatever the browser leaves
        # behind dies with the harness, which is its PID 1).
        ["unshare", "--net", "--pid", "--kill-child=SIGTERM", "--", sys.executable, "-m",
         "tests.viewer.harness", str(work)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=1100)
    report = json.loads((work / "report.json").read_text()) if (work / "report.json").exists() else {}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for path in [*shots.glob("*.png"), work / "report.json", work / "browser.log"]:
        if path.exists():
            shutil.copy2(path, ARTIFACTS / path.name)
    browser_log = (work / "browser.log").read_text(errors="replace") if (work / "browser.log").exists() else ""
    assert proc.returncode == 0 and "steps" in report, (
        f"harness rc={proc.returncode}\n{report.get('setup_problems', '')}\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{browser_log[-3000:]}")
    report["by_name"] = {s["name"]: s for s in report["studies"]}
    return {"report": report, "work": work, "log": browser_log}


def _step(run: dict[str, Any], study: str, step: str) -> dict[str, Any]:
    found = [s for s in run["report"]["steps"] if s["study"] == study and s["step"] == step]
    assert found, f"step {study}/{step} did not run:\n{run['log'][-3000:]}"
    return found[0]


@pytest.mark.parametrize("step", ALL_STEPS)
def test_good_study_opens_cleanly(viewer_run, step):
    """Study list, MR, SEG (names, slices, a voxel), SR values, overlay, PDF: no error anywhere."""
    result = _step(viewer_run, "good", step)
    assert result["ok"], json.dumps({k: result[k] for k in ("problems", "events")}, indent=1)
    assert Path(result["screenshot"]).exists()


@pytest.mark.parametrize("step", [s for s in ALL_STEPS if s != "list"])
def test_enhanced_mr_study_opens_cleanly(viewer_run, step):
    """The Enhanced MR study (one multi-frame object): the MR shows its 48 frames and the SEG,
    whose frames reference source frames, lies on the right frames (every segment's frames and
    voxel count, the probe voxel by image and by patient position); SR, overlay and PDF open."""
    result = _step(viewer_run, "enhanced", step)
    assert result["ok"], json.dumps({k: result[k] for k in ("problems", "events")}, indent=1)
    expect = viewer_run["report"]["by_name"]["enhanced"]["expect"]
    assert len(set(expect["sop_uids"])) == 1 and len(set(expect["image_keys"])) == expect["slices"]


def test_no_http_errors_at_the_proxy(viewer_run):
    """No request of the viewer (static files or DICOMweb) was answered with a status >= 400."""
    assert viewer_run["report"]["proxy_errors"] == []
    assert viewer_run["report"]["proxy_requests"] > 50


def test_broken_seg_is_rejected(viewer_run):
    """A SEG one slice off: the MR still opens, the SEG check fails on where the segments lie."""
    assert _step(viewer_run, "broken-seg", "mr")["ok"]
    result = _step(viewer_run, "broken-seg", "seg")
    assert not result["ok"]
    misplaced = [p for p in result["problems"] if "on slices" in p]
    names = viewer_run["report"]["by_name"]["good"]["expect"]["segment_names"]
    assert len(misplaced) == len(names), result["problems"]


def test_broken_sr_is_rejected(viewer_run):
    """The SR without viewer outlines (segment references only) crashes stock OHIF: caught."""
    assert _step(viewer_run, "broken-sr", "mr")["ok"]
    result = _step(viewer_run, "broken-sr", "sr")
    assert not result["ok"]
    text = " ".join(result["problems"] + result["events"])
    assert "ReferencedSOPSequence" in text or "error boundary" in text.lower(), result


def test_the_node_delivered_what_the_viewer_showed(viewer_run):
    """The job ran through kneenode serve and its SR (the one OHIF showed) carries the outlines."""
    report = viewer_run["report"]
    assert report["job"]["state"] == "done"
    kinds = sorted({Path(p).parent.name for p in report["results"]})
    assert kinds == ["overlay", "pdf", "seg", "sr"]
    outbox = json.loads((Path(report["job"]["job_dir"]) / "outbox.json").read_text())
    assert all(e["state"] == "sent" for d in outbox["destinations"].values() for e in d.values())
    sr = pydicom.dcmread(next(p for p in report["results"] if Path(p).parent.name == "sr"))
    assert read_sr_measurements(sr)  # a TID 1500 reader still reads it
    expected = report["by_name"]["good"]["expect"]["sr_values"]
    assert set(outlines_by_key(sr)) == set(expected)

"""Our result objects open cleanly in stock OHIF 3.13.2, in a real (headless) chromium (issue 9).

One module-scoped run does all the browser work (about a minute): a `small` phantom study with
the SEG, SR, overlay series and PDF our encoders produce is sent by C-STORE into a real Orthanc,
and check.mjs drives OHIF through it (study list, MR, SEG, SR, overlay, PDF), plus two studies
with a deliberately broken SEG and SR that the same checks must reject. The tests below only read
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
from tests.viewer.objects import ALL_STEPS, build_broken, build_good, write_config

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
ARTIFACTS = Path(os.environ.get("KNEENODE_VIEWER_ARTIFACTS", HERE / "artifacts"))


@pytest.fixture(scope="module")
def viewer_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("viewer")
    good, plain_sr = build_good(work / "objects")
    broken = [build_broken(good, plain_sr, work / "objects", kind) for kind in ("seg", "sr")]
    studies = [good, *broken]
    shots = work / "screenshots"
    config = {"out": str(shots), "studies_in_pacs": len(studies), "browser_timeout_s": 240}
    write_config(work / "config.json", studies, **config)
    # The study's files are listed for the harness (it C-STOREs them); keep them out of check.mjs.
    data = json.loads((work / "config.json").read_text())
    for entry, study in zip(data["studies"], studies):
        entry["files"] = [str(p) for p in study.files]
        entry["deliver"] = [str(p) for p in study.delivered]
    (work / "config.json").write_text(json.dumps(data))
    proc = subprocess.run(
        # Own network namespace (only loopback) and PID namespace (whatever the browser leaves
        # behind dies with the harness, which is its PID 1).
        ["unshare", "--net", "--pid", "--kill-child=SIGTERM", "--", sys.executable, "-m",
         "tests.viewer.harness",
         str(work)],
        check=False, cwd=REPO, capture_output=True, text=True, timeout=420)
    report = json.loads((work / "report.json").read_text()) if (work / "report.json").exists() else {}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for path in [*shots.glob("*.png"), work / "report.json", work / "browser.log"]:
        if path.exists():
            shutil.copy2(path, ARTIFACTS / path.name)
    browser_log = (work / "browser.log").read_text(errors="replace") if (work / "browser.log").exists() else ""
    assert proc.returncode == 0 and "steps" in report, (
        f"harness rc={proc.returncode}\n{report.get('setup_problems', '')}\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{browser_log[-3000:]}")
    return {"report": report, "good": good, "broken": broken, "work": work, "log": browser_log}


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
    assert len(misplaced) == len(viewer_run["good"].expect["segment_names"]), result["problems"]


def test_broken_sr_is_rejected(viewer_run):
    """The SR without viewer outlines (segment references only) crashes stock OHIF: caught."""
    assert _step(viewer_run, "broken-sr", "mr")["ok"]
    result = _step(viewer_run, "broken-sr", "sr")
    assert not result["ok"]
    text = " ".join(result["problems"] + result["events"])
    assert "ReferencedSOPSequence" in text or "error boundary" in text.lower(), result


def test_sr_shown_is_the_sr_sent(viewer_run):
    """The SR the viewer showed still reads back to results.json and carries an outline per group."""
    good = viewer_run["good"]
    sr = next(pydicom.dcmread(p) for p in good.delivered if p.parent.name == "sr")
    assert read_sr_measurements(sr) == {k: v for k, v in good.expect["results"].items()}
    outlines = outlines_by_key(sr)
    assert set(outlines) == set(good.expect["sr_values"])

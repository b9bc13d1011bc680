"""``kneenode demo`` (what ``make demo`` runs): Orthanc + node + phantom, results in Orthanc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

KNEENODE = str(Path(sys.executable).with_name("kneenode"))


def test_demo_runs_and_reports_the_results(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNEENODE_")}
    done = subprocess.run([KNEENODE, "demo", "--folder", str(tmp_path / "demo"), "--timeout", "400"],
                          check=False, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for row in ("SEG", "SR", "DOC", "OVERLAY"):
        assert row in out, out
    assert ": done;" in out
    pids = [line for line in done.stdout.splitlines() if "orthanc" in line.lower()]
    assert pids  # it said where Orthanc was
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True,
                               text=True, check=False)
    assert leftovers.stdout.strip() == "", "demo left processes running"


def test_demo_stops_waiting_when_qc_holds_the_job(tmp_path: Path) -> None:
    """A held job ends the demo at once with the QC reasons, not after the timeout. QC is made to
    fail by an impossible volume floor (what a badly segmented knee gets, in seconds)."""
    config = tmp_path / "kneenode.toml"
    config.write_text("[qc]\nmin_volume_mm3 = 1e12\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNEENODE_")}
    done = subprocess.run([KNEENODE, "--config", str(config), "demo", "--preset", "small",
                           "--folder", str(tmp_path / "demo"), "--timeout", "3000"],
                          check=False, capture_output=True, text=True, env=env, timeout=1200,
                          cwd=tmp_path)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    text = " ".join((done.stdout + done.stderr).split())
    assert "error: the job is held for review (docs/qc.md): QC_FAILED" in text, text[-3000:]
    assert ": review;" in text
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path / "demo")], capture_output=True,
                               text=True, check=False)
    assert leftovers.stdout.strip() == "", "demo left processes running"

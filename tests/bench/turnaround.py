"""End-to-end turnaround: last instance -> series complete -> each stage -> results in Orthanc.

Usage: ``.venv/bin/python tests/bench/turnaround.py [--runs 3] [--device cpu|cuda] [--quiet 20]``

One ``kneenode serve`` (real redis, real workers, the committed demo model unless ``--model-dir``)
delivers to a real Orthanc. Each run sends a fresh phantom series with DCMTK storescu three times:
from a peer with completion policy ``timer``, from a peer with ``auto`` (the phantom writes
Images in Acquisition, as GE does: ``release+count``), and from the ``auto`` peer with that
header removed (``auto-geo``: ``release+geometry``, after the release grace period), one after
the other (never overlapping), and reads the times back from the node (``summary.json`` of the
series, the job's stage records) and from Orthanc (polled every 0.1 s until every result is
there). Printed: one row per run and policy, then the medians side by side. Each phase counts
from the previous one's end: ``complete`` from the last instance received, ``first stage`` from
the close, each stage its own duration, ``in orthanc`` from the deliver stage's end (slightly
negative when the 0.1 s poll saw the last result before the deliver stage wrote its end), and
``total`` from the last instance to every result in Orthanc.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import pydicom

from kneenode.orthanc import Orthanc, start_orthanc
from pipeline.phantom import make_phantom, write_phantom
from tests.support.dcmtk import storescu
from tests.support.node import Node
from tests.support.procs import free_port, wait_for
from workers.broker import make_client
from workers.jobstate import JobStore

# policy -> calling AE of the peer configured with it; "auto-geo": auto, but the series' files
# carry no expected count (no Images in Acquisition, as many vendors write), so release+geometry
POLICIES = {"timer": "BENCHTIMER", "auto": "BENCHAUTO", "auto-geo": "BENCHAUTO"}
RESULTS = {"SEG", "SR", "DOC", "MR"}  # MR: the overlay series


def in_orthanc(orthanc: Orthanc, study_uid: str, overlay_instances: int) -> bool:
    """Every result of the study stored (SEG, SR, PDF, and the full overlay series)."""
    found = {s["Modality"]: s["instances"] for s in orthanc.series_of_study(study_uid)}
    return set(found) == RESULTS and found["MR"] == overlay_instances


def one_run(node: Node, orthanc: Orthanc, store: JobStore, policy: str, seed: int, preset: str,
            work: Path, timeout: float) -> dict[str, float]:
    """Send one phantom series as the ``policy`` peer; return the phase times in seconds."""
    paths = write_phantom(make_phantom(seed, preset), work / f"{policy}-{seed}")
    files = paths.dicom_files
    if policy == "auto-geo":
        for f in files:
            ds = pydicom.dcmread(f)
            del ds.ImagesInAcquisition
            ds.save_as(f)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    done = storescu(node.port, files, aet=POLICIES[policy])
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    sent = time.time()

    def job() -> dict[str, Any]:
        jobs = [j for j in store.list_jobs() if j.get("study_uid") == study_uid]
        return jobs[0] if jobs else {}

    deadline = time.monotonic() + timeout
    while not in_orthanc(orthanc, study_uid, len(files)):
        if time.monotonic() > deadline or job().get("state") == "failed":
            raise RuntimeError(f"results not in Orthanc: {json.dumps(job(), default=str)}")
        time.sleep(0.1)
    stored = time.time()
    wait_for(lambda: job().get("state") == "done", 60, what="the job to be done")
    record = job()
    summary = json.loads((Path(record["series_path"]) / "summary.json").read_text())
    closed = summary["completion"]
    last = float(closed["last_instance"])
    stages = record["stages"]
    chain = [s for s in record["chain"] if s in stages]
    row = {"closed_by": closed["closed_by"], "sent": sent - last,
           "complete": float(closed["closed_at"]) - last,
           "first stage": float(stages[chain[0]]["start"]) - float(closed["closed_at"])}
    row.update({name: float(stages[name]["duration"]) for name in chain})
    sent_by = "deliver" if "deliver" in stages else chain[-1]  # history is recorded after it
    end = float(stages[sent_by]["start"]) + float(stages[sent_by]["duration"])
    row["in orthanc"] = stored - end  # < 0: seen before the deliver stage recorded its end
    row["total"] = stored - last
    return row


def print_table(rows: list[tuple[int, str, dict[str, Any]]]) -> None:
    cols = [k for k in rows[0][2] if k != "closed_by"]
    print(f"| run | policy   | closed by        | {' | '.join(f'{c:>11}' for c in cols)} |")
    print(f"|----:|:---------|:-----------------|{'|'.join('-' * 13 for _ in cols)}|")
    for run, policy, r in rows:
        values = " | ".join(f"{r[c]:>11.2f}" for c in cols)
        print(f"| {run:>3} | {policy:<8} | {r['closed_by']:<16} | {values} |")


def print_medians(rows: list[tuple[int, str, dict[str, Any]]]) -> None:
    cols = [k for k in rows[0][2] if k != "closed_by"]
    med = {p: {c: statistics.median(r[c] for _, q, r in rows if q == p) for c in cols}
           for p in POLICIES}
    print(f"\n| median s (last instance = 0) | {' | '.join(f'{p:>8}' for p in POLICIES)} |")
    print(f"|:-----------------------------|{'|'.join('-' * 9 + ':' for _ in POLICIES)}|")
    for c in cols:
        print(f"| {c:<28} | {' | '.join(f'{med[p][c]:>8.2f}' for p in POLICIES)} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (cuda:0) on a GPU host")
    ap.add_argument("--quiet", type=float, default=20.0, help="completion.quiet_seconds")
    ap.add_argument("--preset", default="small", help="phantom preset (small, full)")
    ap.add_argument("--model-dir", default=None, help="segment.model_dir (default: demo model)")
    ap.add_argument("--timeout", type=float, default=600, help="per series, seconds")
    a = ap.parse_args()
    device = "cuda:0" if a.device == "cuda" else a.device
    root = Path(tempfile.mkdtemp(prefix="kneenode-turnaround-"))
    orthanc = start_orthanc(root / "orthanc")
    config: dict[str, Any] = {
        "scp": {"allow_any": True},
        "routes": [{"name": "timer", "calling_ae": [POLICIES["timer"]], "completion_policy": "timer"},
                   {"name": "auto", "calling_ae": [POLICIES["auto"]], "completion_policy": "auto"}],
        "completion": {"quiet_seconds": a.quiet, "poll_seconds": 0.2},
        "jobs": {"http_port": free_port(), "gpu_devices": [device], "optional_stages": [],
                 "poll_ms": 200},
        "delivery": {"destinations": [{"ae_title": orthanc.aet, "host": "127.0.0.1",
                                       "port": orthanc.dicom_port}]},
    }
    if a.model_dir:
        config["segment"] = {"model_dir": a.model_dir}
    node = Node(root=root / "node", config=config, command="serve")
    node.root.mkdir()
    rows: list[tuple[int, str, dict[str, Any]]] = []
    try:
        node.start(timeout=180)
        serve = json.loads((node.data_dir / "serve.json").read_text())
        store = JobStore(make_client(serve["redis_url"]), "kneenode")
        one_run(node, orthanc, store, "auto", 999, a.preset, root, a.timeout)  # warm-up
        for run in range(1, a.runs + 1):
            for policy in POLICIES:
                seed = 100 + 3 * run + list(POLICIES).index(policy)
                rows.append((run, policy, one_run(node, orthanc, store, policy, seed, a.preset,
                                                  root, a.timeout)))
                print(f"run {run} {policy}: {rows[-1][2]['total']:.1f} s", file=sys.stderr)
    finally:
        node.stop()
        orthanc.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nturnaround, phantom '{a.preset}', device {device}, quiet timer {a.quiet:g} s, "
          f"{a.runs} run(s); seconds, each phase from the previous one's end\n")
    print_table(rows)
    print_medians(rows)


if __name__ == "__main__":
    main()

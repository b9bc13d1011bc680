"""End to end: a PACS that is down (nothing listening) or slow (a C-FIND that does not answer in
time: :class:`tests.priors.faults.SlowFindScp`, a fault fixture) leaves the current job's result
unaffected: it completes with every result object, without the comparison, and says why, at
once rather than after the route's ``priors.wait_s``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from pipeline.phantom import make_phantom, write_phantom
from tests.priors.exams import write_exam
from tests.priors.faults import SlowFindScp
from tests.priors.test_followup_e2e import job_of, job_store
from tests.support.dcmtk import storescu
from tests.support.node import KNEENODE, node_env
from tests.support.procs import free_port, wait_for

WAIT_S = 1200  # what a compare that waited for a dead PACS would take


def _route(name: str, calling_ae: str, port: int, find_timeout_s: float) -> dict[str, Any]:
    return {"name": name, "calling_ae": [calling_ae], "priors": {
        "enabled": True, "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": port},
        "find_timeout_s": find_timeout_s, "wait_s": WAIT_S}}


def test_pacs_down_or_slow_leaves_the_result_unaffected(node_factory, tmp_path: Path) -> None:
    slow = SlowFindScp(free_port(), delay_s=600).start()
    try:
        config = {
            "completion": {"quiet_seconds": 1, "poll_seconds": 0.2},
            "jobs": {"http_port": free_port(), "gpu_devices": ["cpu"], "optional_stages": [],
                     "poll_ms": 200},
            "routes": [_route("down", "SCANNER_DOWN", free_port(), 20),
                       _route("slow", "SCANNER_SLOW", slow.port, 3)],
        }
        node = node_factory(config, command="serve")
        store = job_store(node)
        knee = write_phantom(make_phantom(31, "small", side="left"), tmp_path / "knee")
        exams = {name: write_exam(list(knee.dicom_files), tmp_path / name, patient_id=f"P-{name}",
                                  name="DOE^JOHN", study_date="20270101", issuer="")
                 for name in ("down", "slow")}
        for name, exam in exams.items():
            assert storescu(node.port, exam.files, aet=f"SCANNER_{name.upper()}").returncode == 0

        def ended() -> bool:
            return all(job_of(store, e.series_uid).get("state") in ("done", "failed")
                       for e in exams.values())

        wait_for(ended, 1500, interval=1, what="both jobs to end")
        expected = {"down": "pacs_unreachable", "slow": "timeout"}
        for name, exam in exams.items():
            job = job_of(store, exam.series_uid)
            assert job["state"] == "done", (job, store.events(job["id"]))
            assert job["route"] == name and job["change"] == expected[name]
            results = json.loads((Path(job["job_dir"]) / "results.json").read_text())
            change = results["change"]
            assert change["status"] == expected[name], change
            assert change["reason"], change
            assert change["prior"] is None and not change["thickness"]
            assert results["med_tib_cart_mm_mean"] is not None  # the measurement is all there
            took = job["stages"]["compare"]["duration"]
            print(f"PACS {name}: compare took {took:.1f} s ({change['reason']})")
            assert took < 120, took  # the lookup's own limit, not priors.wait_s
            lookup = [e for e in store.events(job["id"]) if e["kind"] == "priors_lookup"]
            assert lookup and lookup[0]["status"] == expected[name], lookup
            assert job["priors"]["status"] == expected[name], job["priors"]
            shown = subprocess.run([KNEENODE, "job", job["id"]], capture_output=True, text=True,
                                   env=node_env(KNEENODE_CONFIG=str(node.config_path),
                                                COLUMNS="200"), timeout=120, check=False)
            assert shown.returncode == 0 and expected[name] in shown.stdout, shown
        assert slow.finds >= 1
    finally:
        slow.stop()

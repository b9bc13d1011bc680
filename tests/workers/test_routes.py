"""End to end: two calling AEs and two called AE titles routed to three profiles.

One real ``kneenode serve`` with the node's own chain and the committed demo models (nnU-Net
phantom demo, demo NSM); DCMTK storescu as the senders; three DCMTK storescp as the destinations.
Three phantom series become three jobs whose chains, result objects and destinations differ as
their profiles and routes say, each recording its rule; a CT series is ignored with its rule.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pydicom

from pipeline.phantom import make_phantom, write_phantom
from tests.support.dcmtk import dcmtk_env, echoscu, storescu
from tests.support.mr import mr_series
from tests.support.node import node_env
from tests.support.procs import free_port, port_open, start, stop, wait_for
from workers.broker import make_client
from workers.jobstate import JobStore

ROOT = Path(__file__).resolve().parents[2]
NSM = ROOT / "models" / "nsm_demo"
FULL_CHAIN = ["prepare", "segment", "qc", "quantify", "encode", "verify", "deliver", "history"]
#: The demo NSM sized for CPU tests (as in tests/pipeline/shape).
FIT = {"iterations": 200, "points": 3000, "mean_shape_resolution": 64, "recon_resolution": 96}


def _sink(root: Path, name: str) -> tuple[subprocess.Popen, int, Path]:
    """A DCMTK storescp accepting any SOP class (SEG, SR, PDF), files into ``root/name``."""
    port, out = free_port(), root / name
    out.mkdir(parents=True)
    proc = start(["storescp", "-pm", "-aet", name, "-od", str(out), str(port)],
                 log=root / f"{name}.log", env=dcmtk_env())
    wait_for(lambda: port_open(port), 15, what=f"storescp {name}")
    return proc, port, out


def _modalities(folder: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in folder.iterdir():
        m = str(pydicom.dcmread(f, stop_before_pixels=True).Modality)
        counts[m] = counts.get(m, 0) + 1
    return counts


def test_two_callers_two_called_aes_three_profiles(node_factory, tmp_path: Path) -> None:
    sinks = {n: _sink(tmp_path, n) for n in ("SINK_A", "SINK_B", "SINK_C")}

    def dest(name: str) -> list[dict[str, Any]]:
        return [{"ae_title": name, "host": "127.0.0.1", "port": sinks[name][1]}]

    http_port = free_port()
    try:
        node = node_factory({
            "scp": {"ae_title": "KNEE_CLIN", "require_called_ae": True, "allow_loopback": False},
            "completion": {"quiet_seconds": 1, "poll_seconds": 0.2},
            "jobs": {"http_port": http_port, "gpu_devices": ["cpu"], "poll_ms": 200,
                     "cpu_threads": 2},
            "segment": {"cpu_threads": 1},
            "nsm": {"enabled": False, "device": "cpu", "bone_cart_model": str(NSM / "femur_bone_cart"),
                    "bone_cart_bscore": str(NSM / "bscore_bone_cart")},
            "delivery": {"timeout": 20, "backoff_min_s": 2, "backoff_max_s": 4},
            "profiles": {
                "full": {"description": "fullres + every output"},
                "segpdf": {"encode": {"sr": False, "overlay": False}},
                "shape": {"nsm": {"enabled": True, "type": "bone_and_cart", **FIT}},
            },
            "routes": [
                {"name": "research", "calling_ae": ["RESEARCH"], "called_ae": ["KNEE_RESEARCH"],
                 "profile": "full", "destinations": dest("SINK_A")},
                {"name": "clinical", "calling_ae": ["RESEARCH"], "called_ae": ["KNEE_CLIN"],
                 "profile": "segpdf", "destinations": dest("SINK_B")},
                {"name": "scanner", "calling_ae": ["SCANNER"], "hosts": ["127.0.0.0/8"],
                 "profile": "shape", "destinations": dest("SINK_C")},
            ],
            "default_route": {"action": "ignore"},
        }, command="serve")
        assert echoscu(node.port, aet="RESEARCH", aec="KNEE_RESEARCH").returncode == 0
        assert echoscu(node.port, aet="RESEARCH", aec="ELSEWHERE").returncode != 0  # unknown AE
        assert echoscu(node.port, aet="STRANGER", aec="KNEE_CLIN").returncode != 0

        sends = {"research": ("RESEARCH", "KNEE_RESEARCH", 21), "clinical": ("RESEARCH", "KNEE_CLIN", 22),
                 "scanner": ("SCANNER", "KNEE_CLIN", 23)}
        series: dict[str, list[Path]] = {}
        for route, (aet, aec, seed) in sends.items():
            series[route] = write_phantom(make_phantom(seed, "small"), tmp_path / route).dicom_files
            done = storescu(node.port, series[route], aet=aet, aec=aec)
            assert done.returncode == 0, done.stderr[-2000:]
        ct = mr_series(tmp_path / "ct", slices=5, modality="CT", description="CT KNEE")
        assert storescu(node.port, ct, aet="RESEARCH", aec="KNEE_CLIN").returncode == 0

        serve = json.loads((node.data_dir / "serve.json").read_text())
        store = JobStore(make_client(serve["redis_url"]), "kneenode")
        wait_for(lambda: len(store.list_jobs()) == 4 and all(
            j["state"] in ("done", "failed", "ignored") for j in store.list_jobs()), 900,
            interval=1, what="three jobs done and one series ignored")
        jobs = {j["route"] if j["state"] != "ignored" else "ignored": j for j in store.list_jobs()}
        assert {r: j["state"] for r, j in jobs.items()} == {
            "research": "done", "clinical": "done", "scanner": "done", "ignored": "ignored"}, jobs

        research, clinical, scanner = jobs["research"], jobs["clinical"], jobs["scanner"]
        assert (research["profile"], clinical["profile"], scanner["profile"]) == ("full", "segpdf", "shape")
        assert research["route_reason"] == "calling_ae=RESEARCH, called_ae=KNEE_RESEARCH"
        assert clinical["route_reason"] == "calling_ae=RESEARCH, called_ae=KNEE_CLIN"
        assert scanner["route_reason"] == "calling_ae=SCANNER, address 127.0.0.1 in 127.0.0.0/8"
        assert research["called_ae"] == "KNEE_RESEARCH" and clinical["called_ae"] == "KNEE_CLIN"
        assert research["chain"] == clinical["chain"] == FULL_CHAIN
        assert scanner["chain"] == [
            "prepare", "segment", "qc", "quantify", "shape", "encode", "verify", "deliver",
            "history"]
        assert not clinical["config"]["settings"]["encode"]["sr"]
        assert scanner["config"]["models"]["nsm"]["bone_cart_model"]["sha256"]
        assert research["config"]["models"]["segment"]["is_demo"] is True
        ignored = jobs["ignored"]
        assert ignored["route"] == "clinical" and "modality CT" in ignored["reason"]

        results = {r: json.loads((Path(j["job_dir"]) / "results.json").read_text())
                   for r, j in jobs.items() if r != "ignored"}
        # the typed results always carry the key: only the NSM profile fills it
        assert results["scanner"]["bscore"] is not None and results["research"]["bscore"] is None

        n = len(series["research"])
        got = {name: _modalities(out) for name, (_, _, out) in sinks.items()}
        assert got["SINK_A"] == {"SEG": 1, "SR": 1, "MR": n, "DOC": 1}, got
        assert got["SINK_B"] == {"SEG": 1, "DOC": 1}, got  # SEG + PDF only
        assert got["SINK_C"] == {"SEG": 1, "SR": 1, "MR": len(series["scanner"]), "DOC": 1}, got

        base = f"http://127.0.0.1:{serve['http_port']}"
        one = httpx.get(f"{base}/jobs/{clinical['id']}").json()
        assert one["profile"] == "segpdf" and one["route"] == "clinical"
        metrics = httpx.get(f"{base}/metrics").text
        for profile, route in (("full", "research"), ("segpdf", "clinical"), ("shape", "scanner")):
            assert (f'kneenode_route_jobs{{profile="{profile}",route="{route}",state="done"}} 1.0'
                    in metrics), metrics
        env = node_env(KNEENODE_CONFIG=str(node.config_path), COLUMNS="250")
        shown = subprocess.run([sys.executable, "-m", "kneenode.cli", "job", scanner["id"]],
                               env=env, capture_output=True, text=True, timeout=120, check=False)
        assert shown.returncode == 0, shown.stderr
        assert "scanner" in shown.stdout and "shape" in shown.stdout
        assert "calling_ae=SCANNER" in shown.stdout
    finally:
        for proc, _, _ in sinks.values():
            stop(proc)

"""``kneenode demo``: the whole loop on one machine, for newcomers and for CI.

Starts a private Orthanc (the "PACS") and the node (embedded redis, SCP, workers) with delivery to
that Orthanc, sends a synthetic knee (phantom) with the node's own C-STORE SCU, waits for the job
to finish, and reports what arrived in Orthanc. Everything runs under one folder and is stopped
at the end (unless ``keep``), by PID.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread

from kneenode.configfile import settings_toml
from kneenode.orthanc import Orthanc, start_orthanc
from kneenode.serve import Node
from kneenode.settings import Settings
from kneenode.signals import wait_for_stop_signal
from scp.sender import Destination, collect_files, send_files
from workers.broker import make_client
from workers.jobstate import TERMINAL, JobStore
from workers.review import REVIEW


@dataclass
class DemoResult:
    """What the demo did and found."""

    job: dict[str, Any]
    study_uid: str
    orthanc_series: list[dict[str, Any]]
    orthanc_url: str
    folder: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_settings(base: Settings, folder: Path, orthanc: Orthanc) -> Settings:
    """The node settings for the demo: private folder and ports, delivery to the Orthanc."""
    dest = Destination.parse(orthanc.destination)
    merged = base.model_dump()
    merged["data_dir"] = folder / "node"
    merged["scp"].update(host="127.0.0.1", port=_free_port())
    merged["completion"].update(quiet_seconds=2.0, poll_seconds=0.5)
    merged["delivery"]["destinations"] = [
        {"ae_title": dest.ae_title, "host": dest.host, "port": dest.port}]
    merged["jobs"].update(redis_url=None, redis_port=0, http_port=_free_port())
    return Settings.model_validate(merged)


def run_demo(base: Settings, folder: Path, *, seed: int = 1, preset: str = "small",
             timeout: float = 900, keep: bool = False, say: Callable[[str], None] = print,
             show: Callable[[DemoResult], None] | None = None) -> DemoResult:
    """Run the demo; raises TimeoutError when the job does not end in ``timeout`` seconds.

    ``show`` is called with the result before a ``keep`` demo waits for Ctrl-C.
    """
    from pipeline.phantom import make_phantom, write_phantom

    folder.mkdir(parents=True, exist_ok=True)
    say(f"starting Orthanc under {folder / 'orthanc'}")
    orthanc = start_orthanc(folder / "orthanc")
    node: Node | None = None
    try:
        settings = demo_settings(base, folder, orthanc)
        config = folder / "kneenode.toml"  # the worker processes read their settings from it
        config.write_text(settings_toml(settings), encoding="utf-8")
        say(f"starting kneenode (SCP port {settings.scp.port}) delivering to {orthanc.destination}")
        node = Node(settings, config)
        node.start()
        paths = write_phantom(make_phantom(seed, preset), folder / f"phantom-{time.time_ns()}")
        files = collect_files([paths.dicom_dir])
        study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        say("storing the synthetic knee in Orthanc too (the PACS holds the images it routes)")
        stored = send_files(files, Destination.parse(orthanc.destination), calling_ae="DEMO")
        if not stored.ok:
            raise RuntimeError(f"Orthanc did not store the phantom: {stored.error}")
        say(f"sending the synthetic knee ({len(files)} instances) to the node")
        report = send_files(files, Destination("KNEENODE", "127.0.0.1", settings.scp.port),
                            calling_ae="DEMO")
        if not report.ok:
            raise RuntimeError(f"the node did not accept the phantom: {report.error}")
        store = JobStore(make_client(node.redis_url), settings.jobs.namespace)
        job = _wait_for_job(store, study_uid, timeout, say)
        result = DemoResult(job, study_uid, orthanc.series_of_study(study_uid), orthanc.url, folder)
        if show is not None:
            show(result)
        return result
    finally:
        if keep:
            say(f"running: Orthanc {orthanc.url}/app/explorer.html, node SCP port "
                f"{settings.scp.port}; Ctrl-C stops both")
            wait_for_stop_signal()
        if node is not None:
            node.stop()
        orthanc.stop()


def _wait_for_job(store: JobStore, study_uid: str, timeout: float,
                  say: Callable[[str], None]) -> dict[str, Any]:
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        jobs = [j for j in store.list_jobs(limit=20) if j.get("study_uid") == study_uid]
        if jobs:
            job = jobs[0]
            if job["state"] != last:
                say(f"job {job['id']}: {job['state']}")
                last = job["state"]
            if job["state"] in TERMINAL or job["state"] == REVIEW:  # held: nothing more comes
                return job
        time.sleep(0.5)
    raise TimeoutError(f"no finished job for the phantom after {timeout:.0f} s")

"""Run the browser check in a private network namespace: Orthanc, the OHIF proxy, chromium.

    unshare --net --pid --kill-child=SIGTERM -- python -m tests.viewer.harness WORK_DIR

``WORK_DIR/config.json`` (written by the test) names the phantom series (and, as
``enhanced_source``, the same phantom as one Enhanced MR object: a second study the node
processes and the viewer opens). This process brings
up loopback, starts Orthanc (a real PACS: DICOMweb plugin on) and stores the series in it (the
PACS has it before it routes it), starts ``kneenode serve`` with Orthanc as its delivery
destination and sends it the series with DCMTK's storescu; the node runs its whole chain
(prepare, segment with the phantom demo model, quantify, encode, deliver) and C-STOREs SEG, SR,
overlay series and PDF into Orthanc. What the viewer must show is read from those results
(objects.node_study); two broken copies of the study go in by REST. Then it serves OHIF with a
same-origin proxy to Orthanc, runs ``check.mjs`` in node (playwright-core driving
/usr/bin/chromium) and writes ``WORK_DIR/report.json``: the browser's per-step results, every
proxy response >= 400, timings. Everything it starts is stopped by PID before it exits, also on
SIGTERM.

Why namespaces: Orthanc 1.10 binds its HTTP and DICOM ports on all addresses; in a new network
namespace only loopback exists, so nothing is reachable from outside while the test runs. In a new
PID namespace this process is PID 1: when it exits, the kernel ends whatever is left in it (a
chromium that playwright could not close, say), so nothing outlives the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.procs import free_port, wait_for
from tests.viewer.objects import Study, build_broken, node_study
from tests.viewer.servers import HERE, OHIF_DIST, ORTHANC_AET, Orthanc, Proxy

NODE_MODULES = HERE / "node_modules"
CHROMIUM = Path("/usr/bin/chromium")


def loopback_up() -> None:
    """Bring up ``lo`` in a fresh network namespace (it starts down)."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def preflight() -> list[str]:
    """What is missing for the browser check (each a hint for ``make setup``)."""
    missing = []
    if not (OHIF_DIST / "index.html").exists():
        missing.append(f"OHIF viewer not unpacked in {OHIF_DIST} (run `make setup`)")
    if not (NODE_MODULES / "playwright-core").exists():
        missing.append(f"playwright-core not installed in {NODE_MODULES} (run `make setup`)")
    if not CHROMIUM.exists():
        missing.append("/usr/bin/chromium missing (Debian package chromium; run `make setup`)")
    return missing


def run_node(work: Path, orthanc: Orthanc, sources: list[list[Path]]) -> list[tuple[list[Path], dict]]:
    """``kneenode serve`` delivering into Orthanc: storescu each series, wait for their jobs' end.

    Returns, per series (in order), the result files its job encoded (what its deliver stage
    sent) and the job record.
    """
    import pydicom

    from tests.support.dcmtk import storescu
    from tests.support.node import Node
    from workers.broker import make_client
    from workers.jobstate import JobStore

    node = Node(root=work / "node", command="serve", config={
        "completion": {"quiet_seconds": 1, "poll_seconds": 0.2},
        "jobs": {"http_port": free_port(), "gpu_devices": ["cpu"], "optional_stages": [],
                 "poll_ms": 200},
        "delivery": {"destinations": [{"ae_title": ORTHANC_AET, "host": "127.0.0.1",
                                       "port": orthanc.dicom_port}]},
    })
    node.root.mkdir(parents=True, exist_ok=True)
    node.start()
    try:
        studies = []
        for source in sources:
            sent = storescu(node.port, source, aet="MRSCANNER")
            if sent.returncode != 0:
                raise RuntimeError(f"storescu to kneenode failed: {sent.stderr[-2000:]}")
            studies.append(str(pydicom.dcmread(source[0], stop_before_pixels=True).StudyInstanceUID))
        serve = json.loads((node.data_dir / "serve.json").read_text())
        store = JobStore(make_client(serve["redis_url"]), "kneenode")

        def job(study_uid: str) -> dict:
            jobs = [j for j in store.list_jobs() if j.get("study_uid") == study_uid]
            return jobs[0] if jobs else {}

        wait_for(lambda: all(job(uid).get("state") in ("done", "failed", "ignored") for uid in studies),
                 360 * len(studies), interval=0.5, what="the kneenode jobs to end")
        out = []
        for uid in studies:
            record = job(uid)
            if record.get("state") != "done":
                raise RuntimeError(f"kneenode job did not finish: {record}\n{node.log()[-3000:]}")
            out.append((sorted((Path(record["job_dir"]) / "encode").glob("*/*.dcm")), record))
        return out
    finally:
        node.stop()


def build_studies(work: Path, source: list[Path], results: list[Path],
                  enhanced: tuple[list[Path], list[Path]] | None = None) -> list[Study]:
    """The node's study, the two deliberately broken copies of it, and (when configured) the
    node's study of the same phantom written as one Enhanced MR object."""
    good, plain_sr = node_study(source, results, work / "objects")
    studies = [good, *(build_broken(good, plain_sr, work / "objects", kind) for kind in ("seg", "sr"))]
    if enhanced is not None:
        studies.append(node_study(*enhanced, work / "objects", name="enhanced")[0])
        studies[-1].steps = [s for s in studies[-1].steps if s != "list"]  # the list: good's step
    return studies


def run(work: Path) -> int:
    config = json.loads((work / "config.json").read_text())
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    report_path = work / "report.json"
    problems = preflight()
    if problems:
        report_path.write_text(json.dumps({"setup_problems": problems}))
        return 2
    loopback_up()
    orthanc = Orthanc(work / "orthanc")
    proxy = None
    browser = None

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    timings: dict[str, float] = {}
    try:
        t = time.monotonic()
        orthanc.start()
        source = [Path(p) for p in config["source"]]
        enhanced_source = [Path(p) for p in config.get("enhanced_source", [])]
        orthanc.upload(source + enhanced_source)  # the PACS holds the series before the node
        timings["orthanc_s"] = time.monotonic() - t
        t = time.monotonic()
        runs = run_node(work, orthanc, [source, enhanced_source] if enhanced_source else [source])
        (results, job), enhanced_run = runs[0], (runs[1] if enhanced_source else None)
        timings["kneenode_job_s"] = time.monotonic() - t
        t = time.monotonic()
        studies = build_studies(work, source, results,
                                (enhanced_source, enhanced_run[0]) if enhanced_run else None)
        for study in studies[1:]:  # the broken copies go in by REST
            orthanc.upload([*study.files, *study.delivered])
        timings["broken_copies_s"] = time.monotonic() - t
        proxy = Proxy(OHIF_DIST, orthanc.url).start()
        check = {**config, "studies": [s.config() for s in studies], "studies_in_pacs": len(studies),
                 "base": proxy.url, "report": str(work / "browser.json"), "tmp": str(work)}
        (work / "check.json").write_text(json.dumps(check))
        t = time.monotonic()
        with open(work / "browser.log", "wb") as log:
            browser = subprocess.Popen(["node", str(HERE / "check.mjs"), str(work / "check.json")],
                                       stdout=log, stderr=subprocess.STDOUT, cwd=HERE,
                                       start_new_session=True)
            rc = browser.wait(timeout=config.get("browser_timeout_s", 300))
        timings["browser_s"] = time.monotonic() - t
        got = json.loads((work / "browser.json").read_text()) if (work / "browser.json").exists() else {}
        report = {
            "node_rc": rc,
            "steps": got.get("steps", []),
            "proxy_errors": [h.__dict__ for h in proxy.errors()],
            "proxy_requests": len(proxy.hits),
            "timings": timings,
            "job": {k: job.get(k) for k in ("id", "state", "job_dir")},
            "results": [str(p) for p in results],
            "enhanced_job": {k: enhanced_run[1].get(k) for k in ("id", "state", "job_dir")}
            if enhanced_run else None,
            "enhanced_results": [str(p) for p in enhanced_run[0]] if enhanced_run else [],
            "studies": [s.config() for s in studies],
        }
        report_path.write_text(json.dumps(report, indent=1))
        return 0
    finally:
        if browser is not None and browser.poll() is None:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait(10)
        if proxy is not None:
            proxy.stop()
        orthanc.stop()


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))

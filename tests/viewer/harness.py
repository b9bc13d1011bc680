"""Run the browser check in a private network namespace: Orthanc, the OHIF proxy, chromium.

    unshare --net --pid --kill-child=SIGTERM -- python -m tests.viewer.harness WORK_DIR

``WORK_DIR/config.json`` (written by the test, see objects.write_config) names the studies and
their files. This process brings up loopback, starts Orthanc (a real PACS: DICOMweb plugin on),
stores the source series by REST and sends the result objects as the ``deliver`` stage does
(scp.delivery: durable outbox, C-STORE with the node's own SCU), serves OHIF and a same-origin proxy to Orthanc, runs ``check.mjs`` in
node (playwright-core driving /usr/bin/chromium) and writes ``WORK_DIR/report.json``: the
browser's per-step results plus every proxy response >= 400. Everything it starts is stopped by
PID before it exits, also on SIGTERM.

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


_SENDING_ORDER = {"seg": 0, "sr": 1, "overlay": 2, "pdf": 3}


def deliver(orthanc: Orthanc, files: list[Path], work: Path) -> dict[str, int]:
    """Send the results to Orthanc the way the ``deliver`` stage does (scp.delivery: outbox,
    one association, C-STORE with the node's SCU), in its order (SEG before the SR citing it)."""
    from kneenode.settings import Settings
    from scp.delivery import deliver as send_pending
    from scp.delivery import resolve_targets

    settings = Settings.model_validate({"delivery": {"destinations": [
        {"ae_title": ORTHANC_AET, "host": "127.0.0.1", "port": orthanc.dicom_port}]}})
    ordered = sorted(files, key=lambda p: (_SENDING_ORDER.get(p.parent.name, 9), p.name))
    report = send_pending(work / "outbox.json", ordered, resolve_targets(settings, "PACS"),
                          settings.delivery)
    if any(report.pending.values()) or report.errors:
        raise RuntimeError(f"delivery to Orthanc incomplete: {report.pending} {report.errors}")
    return report.pending


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
    node = None

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    timings: dict[str, float] = {}
    try:
        t = time.monotonic()
        orthanc.start()
        timings["orthanc_start_s"] = time.monotonic() - t
        t = time.monotonic()
        for study in config["studies"]:
            # What was in the PACS before (the source series, the broken copies) by REST; the
            # results as the deliver stage sends them, by C-STORE (about 0.1 s per instance into
            # Orthanc 1.10, 10x slower than REST).
            orthanc.upload([Path(p) for p in study.pop("files")])
            delivered = [Path(p) for p in study.pop("deliver", [])]
            if delivered:
                deliver(orthanc, delivered, work)
        timings["store_s"] = time.monotonic() - t
        proxy = Proxy(OHIF_DIST, orthanc.url).start()
        check = {**config, "base": proxy.url, "report": str(work / "browser.json"), "tmp": str(work)}
        (work / "check.json").write_text(json.dumps(check))
        t = time.monotonic()
        env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
        with open(work / "browser.log", "wb") as log:
            node = subprocess.Popen(["node", str(HERE / "check.mjs"), str(work / "check.json")],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=HERE,
                                    start_new_session=True)
            rc = node.wait(timeout=config.get("browser_timeout_s", 300))
        timings["browser_s"] = time.monotonic() - t
        browser = json.loads((work / "browser.json").read_text()) if (work / "browser.json").exists() else {}
        report = {
            "node_rc": rc,
            "steps": browser.get("steps", []),
            "proxy_errors": [h.__dict__ for h in proxy.errors()],
            "proxy_requests": len(proxy.hits),
            "timings": timings,
        }
        report_path.write_text(json.dumps(report, indent=1))
        return 0
    finally:
        if node is not None and node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait(10)
        if proxy is not None:
            proxy.stop()
        orthanc.stop()


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))

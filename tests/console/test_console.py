"""The web console in a real (headless) chromium against a real ``kneenode serve`` (issue 17).

One module-scoped run does the work: ``kneenode serve`` (the node's real chain on a `small`
phantom with the phantom demo model, delivering to a DCMTK storescp "PACS") with two accounts,
and console.mjs (playwright-core driving /usr/bin/chromium) walking the console: log in; open the
jobs list, then the test sends a phantom with storescu and the page shows its job go from
queued to done without a reload; the job page (stages, completion, delivery); the results page
(images, the measurements of results.json), the zip download and the PDF; the PACS is stopped
and a resend to it fails (SEND_FAILED on the page), the PACS comes back and Retry makes the job
done; a form posted without its CSRF token is refused; a phantom zip uploaded with a
non-default profile becomes a job that finishes; a zip with `../` members and an oversized
upload are refused with their messages; a viewer cannot post an action (403). The tests below
read the run's report and compare it with the node's own files.
Screenshots: ``tests/console/artifacts/`` (or ``KNEENODE_CONSOLE_ARTIFACTS``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from pipeline.phantom import make_phantom, write_phantom
from tests.support.dcmtk import dcmtk_env, storescu
from tests.support.node import Node
from tests.support.procs import free_port, port_open, start, stop, wait_for
from workers.console.auth import hash_password

pytestmark = pytest.mark.timeout(2400)

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE.parent / "viewer" / "node_modules"
ARTIFACTS = Path(os.environ.get("KNEENODE_CONSOLE_ARTIFACTS", HERE / "artifacts"))
OPERATOR = {"name": "olivia", "password": "operator password 1"}
VIEWER = {"name": "victor", "password": "viewer password 1"}
PROFILE = "research"  # the upload's non-default profile


def _zip(path: Path, members: dict[str, Path]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, source in members.items():
            zf.write(source, name)
    return path


def _pacs(folder: Path, port: int, log: Path) -> Any:
    folder.mkdir(exist_ok=True)
    proc = start(["storescp", "-aet", "PACS", "-od", str(folder), str(port)], log=log,
                 env=dcmtk_env())
    wait_for(lambda: port_open(port), 30, what="storescp")
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    missing = [p for p in (NODE_MODULES / "playwright-core", Path("/usr/bin/chromium"))
               if not p.exists()]
    assert not missing, f"missing {missing}: run `make setup` (tests/viewer/install.sh)"
    work = tmp_path_factory.mktemp("console")
    sent = write_phantom(make_phantom(21, "small", side="right"), work / "sent")
    uploaded = write_phantom(make_phantom(22, "small", side="left"), work / "uploaded")
    upload_zip = _zip(work / "knee.zip", {f"knee/{p.name}": p for p in uploaded.dicom_files})
    slip = _zip(work / "slip.zip", {"../../evil.dcm": sent.dicom_files[0]})
    limit = upload_zip.stat().st_size + (256 << 10)
    big = work / "big.dcm"
    big.write_bytes(os.urandom(limit + (300 << 10)))
    shots = work / "screenshots"
    shots.mkdir()
    pacs_port, pacs_dir = free_port(), work / "pacs"
    pacs = _pacs(pacs_dir, pacs_port, work / "storescp.log")
    node = Node(root=work / "node", command="serve", config={
        "completion": {"quiet_seconds": 1, "poll_seconds": 0.2},
        "jobs": {"http_port": free_port(), "gpu_devices": ["cpu"], "optional_stages": [],
                 "poll_ms": 200},
        "segment": {"device": "cpu", "cpu_threads": 1},
        "delivery": {"destinations": [{"ae_title": "PACS", "host": "127.0.0.1",
                                       "port": pacs_port}], "max_attempts": 1, "timeout": 10},
        "profiles": {PROFILE: {"description": "SEG + PDF only", "encode": {"sr": False,
                                                                          "overlay": False}}},
        "upload": {"max_bytes": limit},
        "http": {"users": {
            OPERATOR["name"]: {"password_hash": hash_password(OPERATOR["password"]),
                               "role": "operator"},
            VIEWER["name"]: {"password_hash": hash_password(VIEWER["password"]), "role": "viewer"},
        }},
    })
    node.root.mkdir(parents=True)
    node.start()
    browser = None
    try:
        serve = json.loads((node.data_dir / "serve.json").read_text())
        config = {
            "base": f"http://127.0.0.1:{serve['http_port']}", "work": str(work),
            "shots": str(shots), "report": str(work / "report.json"),
            "node_modules": str(NODE_MODULES), "operator": OPERATOR, "viewer": VIEWER,
            "series_description": "KNEE PHANTOM", "destination": f"PACS@127.0.0.1:{pacs_port}",
            "upload_zip": str(upload_zip), "upload_profile": PROFILE, "job_timeout_s": 900,
            "bad_uploads": {"zip-slip": str(slip), "too-large": str(big)},
        }
        (work / "config.json").write_text(json.dumps(config))
        with open(work / "browser.log", "wb") as log:
            browser = subprocess.Popen(["node", str(HERE / "console.mjs"), str(work / "config.json")],
                                       stdout=log, stderr=subprocess.STDOUT, cwd=HERE,
                                       start_new_session=True)
            gates = {"send": lambda: storescu(node.port, sent.dicom_files, aet="MRSCANNER"),
                     "pacs-down": lambda: stop(pacs),
                     "pacs-up": lambda: _pacs(pacs_dir, pacs_port, work / "storescp2.log")}
            for name, act in gates.items():
                wait_for(lambda n=name: (work / f"{n}.ready").exists() or browser.poll() is not None,
                         1500, interval=0.2, what=f"the browser at gate {name}")
                if browser.poll() is not None:
                    break
                got = act()
                if name == "send":
                    assert got.returncode == 0, got.stderr[-2000:]
                if name == "pacs-up":
                    pacs = got
                (work / f"{name}.go").write_text("")
            rc = browser.wait(timeout=1500)
    finally:
        if browser is not None and browser.poll() is None:
            os.killpg(browser.pid, 9)
            browser.wait(10)
        node.stop()
        stop(pacs)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for path in [*shots.glob("*.png"), work / "report.json", work / "browser.log"]:
        if path.exists():
            shutil.copy2(path, ARTIFACTS / path.name)
    print(f"console screenshots: {ARTIFACTS}")
    report = json.loads((work / "report.json").read_text()) if (work / "report.json").exists() else {}
    blog = (work / "browser.log").read_text(errors="replace")
    assert "steps" in report, f"browser rc={rc}\n{blog[-3000:]}\n{node.log()[-3000:]}"
    steps = {s["name"]: s for s in report["steps"]}
    return {"steps": steps, "report": report, "rc": rc, "log": blog, "node": node,
            "pacs": pacs_dir, "work": work}


def _step(run: dict[str, Any], name: str) -> dict[str, Any]:
    step = run["steps"].get(name)
    assert step is not None, f"step {name} did not run:\n{run['log'][-3000:]}\n{run['node'].log()[-3000:]}"
    assert step["ok"], step.get("error", "")[:3000] + "\n" + run["node"].log()[-3000:]
    return step


def _job(run: dict[str, Any], job_id: str) -> dict[str, Any]:
    return json.loads((run["node"].data_dir / "jobs" / job_id / "config.json").read_text())


def test_login_is_needed_and_the_front_page_shows_health(run):
    step = _step(run, "login")
    assert "/login?next=/ui/jobs" in step["redirected"] and step["landed"].endswith("/ui/jobs")
    assert step["user"] == f"{OPERATOR['name']} (operator)"
    text = _step(run, "front")["text"]
    for word in ("redis", "ok", "workers per queue", "queue depth", "GPU", "disk", "Last errors"):
        assert word in text, text


def test_a_sent_series_goes_from_queued_to_done_on_the_page_without_a_reload(run):
    step = _step(run, "watch")
    assert step["seen"][-1] == "done", step
    assert step["seen"][0] in ("created", "queued") or step["seen"][0].startswith("running"), step
    assert len(step["seen"]) >= 3  # queued, some running stages, done: all seen live
    assert step["same_page"] and step["refreshed"] > 1


def test_the_job_page_shows_stages_completion_delivery_and_events(run):
    step = _step(run, "detail")
    assert step["state"] == "done"
    assert step["closed_by"].startswith("release"), step["closed_by"]  # storescu: auto policy
    job_id = _step(run, "watch")["job"]
    outbox = json.loads((run["node"].data_dir / "jobs" / job_id / "outbox.json").read_text())
    sent = sum(len(v) for v in outbox["destinations"].values())
    assert any(f"{sent} / {sent}" in row and "0x0000" in row for row in step["delivery"]), step
    assert {"created", "queued", "start", "end", "done"} <= set(step["events"])


def test_the_results_page_shows_results_json_and_its_images(run):
    step = _step(run, "results")
    job_id = _step(run, "watch")["job"]
    results = json.loads((run["node"].data_dir / "jobs" / job_id / "results.json").read_text())
    assert len(step["cells"]) >= 8 * 3 + 9
    for key, value, shown in step["cells"]:
        want = results[key]
        if want is None:
            assert value == "" and shown == "—", key
        else:
            assert float(value) == want, (key, value, want)
    thickness = [c for c in step["cells"] if c[0].endswith("_mm_mean")]
    assert len(thickness) == 8 and all(c[1] for c in thickness)  # the phantom has every region
    assert step["images"] and all(i["width"] > 0 for i in step["images"]), step["images"]
    assert step["pdf"]["status"] == 200 and step["pdf"]["head"] == "%PDF-"
    assert step["pdf"]["type"] == "application/pdf"


def test_the_zip_download_holds_labels_results_and_dicom(run):
    names = zipfile.ZipFile(_step(run, "results")["zip"]).namelist()
    assert any(n.endswith("results.json") for n in names), names
    assert any(n.endswith("results.csv") for n in names), names
    assert any(n.endswith(".nii.gz") for n in names), names
    assert sum(n.endswith(".dcm") for n in names) >= 4, names


def test_resend_to_a_down_pacs_fails_and_retry_delivers_again(run):
    failed = _step(run, "resend-fails")
    assert "queued for PACS@" in failed["flash"], failed
    assert "SEND_FAILED" in failed["error"] and "retry" in failed["error"], failed
    retried = _step(run, "retry")
    assert "queued again from stage 'deliver'" in retried["flash"], retried
    by_kind = {kind: user for kind, user in retried["events"]}
    assert by_kind.get("resend") == OPERATOR["name"] and by_kind.get("retry") == OPERATOR["name"]
    assert any("0x0000" in row for row in retried["delivery"])
    assert len(list(run["pacs"].iterdir())) > 0


def test_a_form_without_its_csrf_token_is_refused(run):
    step = _step(run, "csrf")
    assert step["status"] == 403 and step["csrf_message"] and step["state"] == "done"


def test_an_uploaded_zip_with_another_profile_becomes_a_job_that_finishes(run):
    step = _step(run, "upload")
    assert step["state"] == "done" and step["profile_shown"] and step["uploaded_by"], step
    assert _job(run, step["job"])["profile"] == PROFILE


def test_a_zip_slip_and_an_oversized_upload_are_refused_with_their_messages(run):
    step = _step(run, "refusals")
    assert "UPLOAD_UNSAFE_PATH" in step["zip-slip"] and "../" in step["zip-slip"], step
    assert "UPLOAD_TOO_LARGE" in step["too-large"] and "upload.max_bytes" in step["too-large"]
    spool = run["node"].data_dir / "spool" / "complete"
    assert not list(spool.rglob("evil.dcm"))


def test_a_viewer_cannot_post_an_action(run):
    step = _step(run, "viewer")
    assert step["actions_section"] == 0
    assert step["status"] == 403 and step["role_message"], step


def test_no_page_errors(run):
    assert run["report"]["problems"] == [] or all(
        "403" in p or "413" in p or "400" in p for p in run["report"]["problems"]), run["report"]["problems"]
    assert run["rc"] == 0, run["log"][-3000:]

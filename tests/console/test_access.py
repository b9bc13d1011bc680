"""Console access rules against a real redis-server (starlette's TestClient, in-process):
login, roles, CSRF, the JSON API's protection, cookie flags, loopback without accounts, and the
refusal to serve the console off loopback without accounts (a real `kneenode serve`)."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from kneenode.errors import NodeError
from kneenode.settings import Settings
from tests.support.node import KNEENODE, node_env, write_toml
from workers.console.auth import hash_password
from workers.http import make_app
from workers.jobstate import JobStore
from workers.redisproc import start_redis

PASSWORD = "correct horse battery"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    child = start_redis(tmp_path / "redis")
    try:
        yield child.url
    finally:
        child.stop()


def _app(tmp_path: Path, redis_url: str, **http: Any) -> tuple[TestClient, JobStore]:
    settings = Settings(data_dir=tmp_path / "data", http=http)
    from workers.broker import make_client

    store = JobStore(make_client(redis_url), settings.jobs.namespace)
    return TestClient(make_app(store, settings, redis_url), base_url="http://127.0.0.1"), store


def _users() -> dict[str, Any]:
    digest = hash_password(PASSWORD)
    return {"users": {"op": {"password_hash": digest, "role": "operator"},
                      "viewer": {"password_hash": digest, "role": "viewer"}}}


def _csrf(client: TestClient, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def _login(client: TestClient, name: str, password: str = PASSWORD) -> Any:
    return client.post("/login", data={"name": name, "password": password, "next": "/ui/jobs",
                                       "csrf": _csrf(client, "/login")}, follow_redirects=False)


def _job(store: JobStore) -> str:
    job_id, _ = store.create(f"1.2.3.{uuid.uuid4().int % 10**9}", 1, {"calling_ae": "PACS", "series_description": "knee",
                                            "chain": ["s1"], "profile": "default"})
    store.update(job_id, state="queued", stage="s1")
    return job_id


def test_with_accounts_everything_but_health_and_metrics_needs_a_login(tmp_path, redis_url):
    client, store = _app(tmp_path, redis_url, **_users())
    job_id = _job(store)
    assert client.get("/health").status_code in (200, 503)  # no workers here: degraded
    assert client.get("/metrics").status_code == 200
    for path in ("/", "/ui/jobs", f"/ui/jobs/{job_id}", "/ui/upload", f"/ui/jobs/{job_id}/results"):
        got = client.get(path, follow_redirects=False)
        assert got.status_code == 303 and got.headers["location"].startswith("/login"), path
    api = client.get("/jobs")
    assert api.status_code == 401 and api.headers["www-authenticate"].startswith("Basic")
    assert client.get("/jobs", auth=("viewer", "wrong")).status_code == 401
    listed = client.get("/jobs", auth=("viewer", PASSWORD))
    assert listed.status_code == 200 and listed.json()["jobs"][0]["id"] == job_id
    assert client.get(f"/jobs/{job_id}", auth=("op", PASSWORD)).json()["id"] == job_id

    bad = _login(client, "op", "wrong password")
    assert bad.status_code == 401 and "wrong user name or password" in bad.text
    good = _login(client, "op")
    assert good.status_code == 303 and good.headers["location"] == "/ui/jobs"
    cookie = good.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower()
    assert "secure" not in cookie.lower()  # plain HTTP: the rule of http.secure_cookies
    assert client.get("/jobs").status_code == 200  # the console session works for the API too
    page = client.get("/ui/jobs")
    assert page.status_code == 200 and job_id[-6:] in page.text and "op (operator)" in page.text


def test_a_viewer_cannot_post_an_action_and_a_form_without_its_token_is_refused(tmp_path,
                                                                                redis_url):
    client, store = _app(tmp_path, redis_url, **_users())
    job_id = _job(store)
    assert _login(client, "viewer").status_code == 303
    token = _csrf(client, f"/ui/jobs/{job_id}")
    denied = client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": token})
    assert denied.status_code == 403 and "role operator" in denied.text
    assert store.get(job_id)["state"] == "queued"
    client.post("/logout", data={"csrf": token})

    assert _login(client, "op").status_code == 303
    forged = client.post(f"/ui/jobs/{job_id}/cancel", data={})
    assert forged.status_code == 403 and "CSRF token" in forged.text
    stale = client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": token})  # viewer's session
    assert stale.status_code == 403
    assert store.get(job_id)["state"] == "queued"
    done = client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf": _csrf(client, f"/ui/jobs/{job_id}")},
                       follow_redirects=False)
    assert done.status_code == 303 and store.get(job_id)["state"] == "cancelled"
    cancelled = [e for e in store.events(job_id) if e["kind"] == "cancelled"]
    assert cancelled and cancelled[-1]["user"] == "op"
    page = client.get(f"/ui/jobs/{job_id}")
    assert f"job {job_id} cancelled" in page.text  # the outcome, shown once
    again = client.post(f"/ui/jobs/{job_id}/cancel",
                        data={"csrf": _csrf(client, f"/ui/jobs/{job_id}")})
    assert "already ended" in again.text  # refused with the action's own message


def test_loopback_without_accounts_is_open_as_local_but_still_checks_csrf_and_host(tmp_path,
                                                                                 redis_url):
    client, store = _app(tmp_path, redis_url)
    job_id = _job(store)
    page = client.get("/ui/jobs")
    assert page.status_code == 200 and "local (operator)" in page.text
    front = client.get("/")
    assert front.status_code == 200 and "Node health" in front.text and "redis" in front.text
    store.update(job_id, series_description="<script>alert(1)</script>")  # from a DICOM header
    rows = client.get("/ui/jobs/rows").text
    assert "<script>alert" not in rows and "&lt;script&gt;alert(1)&lt;/script&gt;" in rows
    assert client.get("/jobs").status_code == 200
    assert client.post(f"/ui/jobs/{job_id}/cancel", data={}).status_code == 403
    rebound = client.get("/ui/jobs", headers={"host": "attacker.example"})
    assert rebound.status_code == 400  # DNS rebinding: only loopback host names


def test_secure_cookies_and_the_exposure_rule(tmp_path, redis_url):
    client, _ = _app(tmp_path, redis_url, secure_cookies=True, **_users())
    page = client.get("/login")
    assert "secure" in page.headers["set-cookie"].lower()
    settings = Settings(data_dir=tmp_path / "d2", jobs={"http_host": "0.0.0.0"})
    from workers.broker import make_client

    store = JobStore(make_client(redis_url), "x")
    with pytest.raises(NodeError, match="not a loopback address"):
        make_app(store, settings, redis_url)
    make_app(store, Settings(data_dir=tmp_path / "d3", jobs={"http_host": "0.0.0.0"},
                             http=_users()), redis_url)


def test_serve_refuses_to_start_off_loopback_without_accounts(tmp_path):
    config = tmp_path / "kneenode.toml"
    write_toml(config, {"data_dir": str(tmp_path / "data"), "jobs": {"http_host": "0.0.0.0"}})
    done = subprocess.run([KNEENODE, "serve"], capture_output=True, text=True, timeout=120,
                          env=node_env(KNEENODE_CONFIG=str(config)), check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "CONFIG_ERROR" in lines[0] and "not a loopback address" in done.stderr, done.stderr
    assert not (tmp_path / "data" / "serve.json").exists()


def test_user_add_writes_an_account_the_node_accepts(tmp_path):
    config = tmp_path / "kneenode.toml"
    config.write_text('[scp]\nport = 11112\n', encoding="utf-8")
    env = node_env(KNEENODE_CONFIG=str(config))
    add = subprocess.run([KNEENODE, "user", "add", "ann", "--role", "operator",
                          "--password-stdin"], input=PASSWORD + "\n", capture_output=True,
                         text=True, env=env, timeout=60, check=False)
    assert add.returncode == 0, add.stderr
    again = subprocess.run([KNEENODE, "user", "add", "ann", "--password-stdin"],
                           input=PASSWORD + "\n", capture_output=True, text=True, env=env,
                           timeout=60, check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    from kneenode.settings import load_settings
    from workers.console.auth import authenticate

    settings = load_settings(config)
    assert settings.scp.port == 11112
    assert authenticate(settings.http, "ann", PASSWORD).role == "operator"
    assert authenticate(settings.http, "ann", "nope") is None
    assert PASSWORD not in config.read_text()


@pytest.mark.parametrize("show", [False, True])
def test_patient_name_and_id_only_with_show_patient(tmp_path, redis_url, show):
    from tests.support.mr import mr_series

    files = mr_series(tmp_path / "series", slices=2, rows=16, columns=16)
    client, store = _app(tmp_path, redis_url, show_patient=show)
    job_id = _job(store)
    store.update(job_id, series_path=str(files[0].parent))
    for path in ("/ui/jobs", f"/ui/jobs/{job_id}", "/ui/jobs/rows"):
        text = client.get(path).text
        assert ("PHANTOM^EDGE" in text and "PHANTOM-0001" in text) is show, path
    record = client.get(f"/jobs/{job_id}").text
    assert "PHANTOM^EDGE" not in record and "PHANTOM-0001" not in record


def test_an_operator_releases_and_discards_qc_held_jobs_from_the_console(tmp_path, redis_url):
    client, store = _app(tmp_path, redis_url, **_users())
    held = {}
    for name in ("released", "discarded"):
        job_id = _job(store)
        folder = tmp_path / name
        folder.mkdir()
        store.update(job_id, state="review", stage="s1", job_dir=str(folder),
                     chain=["s1"], error={"code": "QC_FAILED", "message": "femur missing",
                                          "hint": "review it"})
        held[name] = job_id
    assert _login(client, "op").status_code == 303
    page = client.get(f"/ui/jobs/{held['released']}")
    assert 'id="form-release"' in page.text and 'id="form-discard"' in page.text
    assert "QC_FAILED" in page.text and "femur missing" in page.text
    for action, name in (("release", "released"), ("discard", "discarded")):
        token = _csrf(client, f"/ui/jobs/{held[name]}")
        done = client.post(f"/ui/jobs/{held[name]}/{action}", data={"csrf": token},
                           follow_redirects=False)
        assert done.status_code == 303, done.text
        event = store.events(held[name])[-1]
        assert event["kind"] == name and event["operator"] == "op", event
    assert store.get(held["released"])["state"] == "queued"
    assert store.get(held["discarded"])["state"] == "cancelled"
    again = client.post(f"/ui/jobs/{held['discarded']}/discard",
                        data={"csrf": _csrf(client, f"/ui/jobs/{held['discarded']}")})
    assert "not in review" in again.text
    resend = client.post(f"/ui/jobs/{held['released']}/resend",
                         data={"csrf": _csrf(client, f"/ui/jobs/{held['released']}"),
                               "destination": "PACS@127.0.0.1:104"})
    assert "only a done or failed job" in resend.text


def test_an_upload_past_the_limit_is_refused_before_it_is_read(tmp_path, redis_url):
    settings = Settings(data_dir=tmp_path / "data", http=_users(), upload={"max_bytes": 1 << 20})
    from workers.broker import make_client

    app = make_app(JobStore(make_client(redis_url), "small"), settings, redis_url)
    client = TestClient(app, base_url="http://127.0.0.1")
    assert _login(client, "op").status_code == 303
    refused = client.post("/ui/upload", data={"csrf": _csrf(client, "/ui/upload")},
                          files={"files": ("big.zip", os.urandom(3 << 20), "application/zip")})
    assert refused.status_code == 413, refused.text
    assert "UPLOAD_TOO_LARGE" in refused.text and "upload.max_bytes" in refused.text
    assert not (tmp_path / "data" / "spool").exists() or not list(
        (tmp_path / "data" / "spool").rglob("*.zip"))

"""`kneenode jobs` at 80 columns (short IDs, nothing wrapped) and wider (full IDs), against a
real redis-server; the short IDs work with `kneenode job`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from workers.jobstate import JobStore

KNEENODE = str(Path(sys.executable).with_name("kneenode"))


def _jobs(store: JobStore) -> list[str]:
    """Three jobs as an operator meets them: running, failed with a code, done."""
    ids = []
    for i, (state, extra) in enumerate([
        ("running:segment", {"progress": 0.4}),
        ("failed", {"error": {"code": "INVALID_FORMAT", "message": "missing slices", "hint": ""}}),
        ("done", {"progress": 1.0}),
    ]):
        job_id, _ = store.create(f"1.2.826.0.1.3680043.8.498.{i}1234567890123456789", 1, {
            "series_description": "SAG 3D DESS WE KNEE LEFT WITH A LONG NAME", "calling_ae": "MRSCANNER01"})
        store.update(job_id, state=state, **extra)
        ids.append(job_id)
    return ids


def _cli(store: JobStore, columns: int, *args: str) -> subprocess.CompletedProcess[str]:
    kw = store.client.connection_pool.connection_kwargs
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNEENODE_")}
    env.update(KNEENODE_JOBS__NAMESPACE="kntest", COLUMNS=str(columns),
               KNEENODE_JOBS__REDIS_URL=f"redis://{kw['host']}:{kw['port']}/0")
    return subprocess.run([KNEENODE, *args], check=False, capture_output=True, text=True, env=env,
                          timeout=120)


def test_jobs_at_80_columns_shows_whole_short_ids(store) -> None:
    ids = _jobs(store)
    out = _cli(store, 80, "jobs")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, out.stdout
    for job_id in ids:
        short = job_id.rsplit("-", 1)[-1]
        rows = [line for line in lines if short in line]
        assert len(rows) == 1, out.stdout  # one row per job: nothing wrapped
        assert job_id not in out.stdout
    row = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in
           [i.rsplit("-", 1)[-1] for i in ids]}
    assert "running:segment 40%" in row[ids[0].rsplit("-", 1)[-1]]
    assert "failed INVALID_FORMAT" in row[ids[1].rsplit("-", 1)[-1]]
    for line in row.values():  # every column is there, whole: calling AE (cut to 10), time
        assert "MRSCANNER…" in line and re.search(r"\d\d-\d\d \d\d:\d\d$", line.rstrip()), line
    assert len([line for line in lines if line.strip()]) == 3 + 3  # title, header, rule + 3 rows


def test_jobs_when_wider_shows_full_ids_and_short_ids_resolve(store) -> None:
    ids = _jobs(store)
    out = _cli(store, 200, "jobs")  # the full layout (route and profile columns too) fits
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 200
    for job_id in ids:
        assert len([line for line in lines if job_id in line]) == 1, out.stdout
    assert "INVALID_FORMAT" in out.stdout and "40%" in out.stdout
    assert out.stdout.count("MRSCANNER01") == 3
    assert len(re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", out.stdout)) == 3
    shown = _cli(store, 80, "job", ids[1].rsplit("-", 1)[-1])
    assert shown.returncode == 0 and "missing slices" in shown.stdout, shown.stderr
    assert ids[1] in shown.stdout
    missing = _cli(store, 80, "job", "zzzzzz")
    assert missing.returncode == 1 and "no job zzzzzz" in missing.stderr

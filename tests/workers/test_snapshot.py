"""The job owns its configuration: a config change and a worker restart mid-job change nothing
for an existing job; ``retry`` reuses its snapshot; ``reprocess --profile`` makes a new, linked
job with the new configuration. Real redis, real worker processes, the real CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.node import node_env
from tests.workers.conftest import FAST_JOBS, Cluster, write_config

JOBS = {"chain": "tests.workers.chains:settings_chain"}


def _config(prefix: str, other: str) -> dict[str, Any]:
    return {
        "profiles": {"main": {"encode": {"description_prefix": prefix}},
                     "other": {"encode": {"description_prefix": other},
                               "segment": {"configuration": "3d_lowres"}}},
        "default_route": {"profile": "main"},
    }


def _seen(job: dict[str, Any], stage: str) -> dict[str, Any]:
    return json.loads((Path(job["job_dir"]) / stage / "settings.json").read_text())


def _cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    env = node_env(KNEENODE_CONFIG=str(cluster.config), COLUMNS="250")
    return subprocess.run([sys.executable, "-m", "kneenode.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_restart_mid_job_keeps_the_snapshot_retry_reuses_it_reprocess_links(cluster_factory):
    cluster = cluster_factory(extra=_config("OLD", "OTHER-OLD"), **JOBS)
    cluster.start_workers()
    job_id = cluster.submit({"s2": "sleep:6"})
    created = cluster.store.get(job_id)
    assert created is not None
    assert created["profile"] == "main" and created["route"] == "default"
    assert created["route_reason"] == "no route matched"
    assert created["config"]["settings"]["encode"]["description_prefix"] == "OLD"
    assert json.loads((Path(created["job_dir"]) / "config.json").read_text()) == created["config"]
    cluster.wait(job_id, {"running:s2"}, timeout=60)

    # the operator edits the config and restarts the workers while s2 runs
    write_config(cluster.config, cluster.root / "data",
                 {**FAST_JOBS, **JOBS, "redis_url": cluster.redis.url},
                 _config("NEW", "OTHER-NEW"))
    old_pids = set(cluster.supervisor.pids()) if cluster.supervisor else set()
    cluster.stop_workers()
    cluster.start_workers()
    job = cluster.wait(job_id, {"done", "failed"}, timeout=90)
    assert job["state"] == "done", job
    kinds = [e["kind"] for e in cluster.store.events(job_id)]
    assert "requeued" in kinds  # s2 really was interrupted by the restart
    after = _seen(job, "s3")
    assert after["prefix"] == "OLD" and after["pid"] not in old_pids  # new worker, old snapshot
    assert _seen(job, "s1")["prefix"] == "OLD"

    # retry: the same job again, still with its own snapshot
    done = _cli(cluster, "retry", job_id, "--from-stage", "s1")
    assert done.returncode == 0, done.stderr
    assert "profile 'main'" in done.stdout
    job = cluster.wait(job_id, {"done", "failed"}, timeout=90)
    while int(job["run"]) != 2 or job["state"] != "done":
        job = cluster.wait(job_id, {"done", "failed"}, timeout=90)
    assert [_seen(job, s)["prefix"] for s in ("s1", "s2", "s3")] == ["OLD"] * 3

    # reprocess with another profile: a new job, linked, running today's config of that profile
    done = _cli(cluster, "reprocess", job_id, "--profile", "other")
    assert done.returncode == 0, done.stderr
    new_id = next(j["id"] for j in cluster.store.list_jobs() if j.get("reprocess_of") == job_id)
    new = cluster.wait(new_id, {"done", "failed"}, timeout=90)
    assert new["state"] == "done", new
    assert _seen(new, "s3") == {**_seen(new, "s3"), "prefix": "OTHER-NEW",
                                "configuration": "3d_lowres"}
    assert new["profile"] == "other" and new["previous_job"] == job_id
    assert new["series_path"] == job["series_path"] and new["series_uid"] == job["series_uid"]
    assert cluster.store.get(job_id)["reprocessed_as"] == new_id

    # reprocess with --set on the job's own profile (as configured now)
    done = _cli(cluster, "reprocess", job_id, "--set", "encode.description_prefix=SET",
                "--set", "segment.configuration=3d_cascade_fullres")
    assert done.returncode == 0, done.stderr
    third = next(j for j in cluster.store.list_jobs() if j.get("reprocess_of") == job_id
                 and j["id"] != new_id)
    third = cluster.wait(third["id"], {"done", "failed"}, timeout=90)
    assert third["profile"] == "main" and third["config"]["sets"]["segment"] == {
        "configuration": "3d_cascade_fullres"}
    assert _seen(third, "s2")["prefix"] == "SET"
    assert _seen(third, "s2")["configuration"] == "3d_cascade_fullres"

    shown = _cli(cluster, "job", new_id)
    assert shown.returncode == 0, shown.stderr
    assert "other" in shown.stdout and job_id in shown.stdout and "s1 -> s2 -> s3" in shown.stdout
    bad = _cli(cluster, "reprocess", job_id, "--profile", "nope")
    assert bad.returncode == 2 and "no profile 'nope'" in bad.stderr
    bad = _cli(cluster, "reprocess", job_id, "--set", "jobs.redis_url=x")
    assert bad.returncode == 2 and "profiles override" in bad.stderr

"""Retention against a real redis-server: finished work is removed in time, undelivered never."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from kneenode.settings import RetentionSettings, Settings
from workers.jobstate import JobStore
from workers.retention import DAY, apply, plan_emergency, plan_manual, run_retention

KNEENODE = str(Path(sys.executable).with_name("kneenode"))


def make_job(store: JobStore, root: Path, state: str, age_days: float) -> tuple[str, Path, Path]:
    job_dir, series = root / "jobs" / state / str(age_days), root / "spool" / state / str(age_days)
    for folder in (job_dir, series):
        folder.mkdir(parents=True)
        (folder / "x.dcm").write_bytes(b"0" * 1024)
    job_id, _ = store.create(f"1.2.{len(list(root.rglob('*')))}", 1,
                             {"job_dir": str(job_dir), "series_path": str(series)})
    # back-date the record directly (JobStore.update always stamps "now")
    store.client.hset(store.key("job", job_id),
                      mapping={"state": state, "updated": time.time() - age_days * DAY})
    return job_id, job_dir, series


def test_expired_finished_jobs_go_failed_and_active_stay(store, tmp_path):
    settings = Settings(data_dir=tmp_path, retention=RetentionSettings(
        days=7, emergency_free_bytes=0, emergency_free_percent=0))
    old_done = make_job(store, tmp_path, "done", 8)
    new_done = make_job(store, tmp_path, "done", 2)
    old_ignored = make_job(store, tmp_path, "ignored", 9)
    old_failed = make_job(store, tmp_path, "failed", 30)
    old_waiting = make_job(store, tmp_path, "retry_wait", 30)
    removed = {i.job_id for i in run_retention(settings, store)}
    assert removed == {old_done[0], old_ignored[0]}
    for job_id, job_dir, series in (old_done, old_ignored):
        assert not job_dir.exists() and not series.exists()
        assert store.get(job_id)["purged"] and store.events(job_id)[-1]["kind"] == "purged"
    for _, job_dir, series in (new_done, old_failed, old_waiting):
        assert job_dir.exists() and series.exists()
    assert run_retention(settings, store) == []  # idempotent


def test_emergency_removes_oldest_finished_first_never_failed(store, tmp_path):
    settings = Settings(data_dir=tmp_path, retention=RetentionSettings(
        days=7, emergency_free_bytes=2**62))  # the disk is "always low"
    done_new, done_old = make_job(store, tmp_path, "done", 1), make_job(store, tmp_path, "done", 3)
    ignored = make_job(store, tmp_path, "ignored", 5)
    failed = make_job(store, tmp_path, "failed", 1)
    running = make_job(store, tmp_path, "running:segment", 1)
    order = [i.job_id for i in plan_emergency(store.list_jobs(limit=100))]
    assert order == [done_old[0], done_new[0], ignored[0]]
    removed = [i.job_id for i in run_retention(settings, store)]
    assert removed == order
    assert failed[1].exists() and running[1].exists() and running[2].exists()


def test_emergency_stops_when_there_is_room(store, tmp_path):
    a, b = make_job(store, tmp_path, "done", 1), make_job(store, tmp_path, "done", 2)
    calls = iter([False, True])
    done = apply(store, plan_emergency(store.list_jobs(limit=10)), stop_when=lambda: next(calls))
    assert [i.job_id for i in done] == [b[0]] and a[1].exists()


def test_manual_purge_takes_failed_jobs_on_request_only(store, tmp_path):
    failed = make_job(store, tmp_path, "failed", 1)
    queued = make_job(store, tmp_path, "queued", 1)
    jobs = store.list_jobs(limit=10)
    assert plan_manual(jobs, job_ids=set(), states=set(), older_than_days=0, now=time.time()) == []
    by_id = plan_manual(jobs, job_ids={failed[0], queued[0]}, states=set(), older_than_days=0,
                        now=time.time())
    assert [i.job_id for i in by_id] == [failed[0]]  # never an active job
    by_state = plan_manual(jobs, job_ids=set(), states={"failed"}, older_than_days=0,
                           now=time.time())
    assert [i.job_id for i in by_state] == [failed[0]]


def test_purge_cli(store, tmp_path):
    failed = make_job(store, tmp_path, "failed", 1)
    running = make_job(store, tmp_path, "running:segment", 1)
    url = store.client.connection_pool.connection_kwargs
    env = {k: v for k, v in os.environ.items() if not k.startswith("KNEENODE_")}
    env.update(KNEENODE_DATA_DIR=str(tmp_path), KNEENODE_JOBS__NAMESPACE="kntest",
               KNEENODE_JOBS__REDIS_URL=f"redis://{url['host']}:{url['port']}/0")

    def purge(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([KNEENODE, "purge", *args], check=False, capture_output=True, text=True,
                              env=env, timeout=60)

    dry = purge("--state", "failed", "--dry-run")
    assert dry.returncode == 0 and f"would remove {failed[0]}" in dry.stdout
    assert failed[1].exists()
    assert purge(running[0]).returncode == 1 and running[1].exists()  # active: refused
    assert purge("--state", "running").returncode == 2
    done = purge(failed[0])
    assert done.returncode == 0, done.stderr
    assert not failed[1].exists() and not failed[2].exists()
    assert store.get(failed[0])["purged"]
    retry = subprocess.run([KNEENODE, "retry", failed[0]], check=False, capture_output=True, text=True,
                           env=env, timeout=60)
    assert retry.returncode == 1 and "purged" in retry.stderr


def test_retention_never_deletes_the_history(store, tmp_path):
    """Expired and emergency removal of job and spool folders leave the results history (its
    database and the pseudonym secret under data_dir/history) and every record in it."""
    from datetime import date

    from kneenode.history import ExamRecord, open_history
    from kneenode.history.store import history_dir, secret_path

    settings = Settings(data_dir=tmp_path, retention=RetentionSettings(
        days=7, emergency_free_bytes=2**62))  # expired ones, then everything finished
    jobs = [make_job(store, tmp_path, "done", age) for age in (1, 8, 30)]
    with open_history(settings) as history:
        p = history.pseudonym("P1", "H")
        for i, (job_id, _, _) in enumerate(jobs):
            history.record(ExamRecord(job_id=job_id, study_uid="1.2", series_uid=f"1.2.{i}",
                                      pseudonym=p, side="left", study_date=date(2020 + i, 1, 1),
                                      results={"med_wb_fem_cart_mm_mean": 2.0 - i / 10}))
        before = history.all_exams(include_superseded=True)
    secret = secret_path(settings).read_bytes()
    removed = run_retention(settings, store)
    assert {i.job_id for i in removed} == {j[0] for j in jobs}
    assert all(not job_dir.exists() for _, job_dir, _ in jobs)
    assert history_dir(settings).is_dir() and secret_path(settings).read_bytes() == secret
    with open_history(settings) as history:
        assert history.all_exams(include_superseded=True) == before
        assert [e.job_id for e in history.exams(p, "left")] == [j[0] for j in jobs]

"""Job commands: ``serve``, ``worker``, ``jobs``, ``job``, ``retry``, ``reprocess``, ``cancel``."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from kneenode.changeview import job_change
from kneenode.cli_app import CliState, app, fail, settings_for
from kneenode.errors import NodeError
from kneenode.joblist import jobs_table, when
from kneenode.profiles import parse_sets
from kneenode.settings import Settings
from scp.routing import match_series
from workers.broker import make_broker, make_client, resolve_redis_url
from workers.dispatch import enqueue_stage
from workers.intake import dispatch, job_fields
from workers.jobconfig import build_config, job_settings, startup_stages
from workers.jobstate import TERMINAL, JobStore
from workers.stages import load_chain
from workers.supervisor import Supervisor, specs_for_worker

console = Console()


def _store(settings: Settings) -> tuple[JobStore, str]:
    try:
        url = resolve_redis_url(settings)
    except NodeError as exc:
        raise fail(f"{exc.message}. {exc.hint}") from None
    return JobStore(make_client(url), settings.jobs.namespace), url


def resolve_job_id(store: JobStore, given: str) -> str:
    """The full job ID for a full or short ID (as ``kneenode jobs`` shows it at 80 columns)."""
    found = store.match_ids(given)
    if not found:
        raise fail(f"no job {given}")
    if len(found) > 1:
        raise fail(f"{len(found)} jobs match '{given}' ({', '.join(found[:4])}...): give more "
                   "of the ID")
    return found[0]


def _job(store: JobStore, given: str) -> tuple[str, dict[str, Any]]:
    """The full ID and record of a job given by its full or short ID."""
    job_id = resolve_job_id(store, given)
    job = store.get(job_id)
    if job is None:
        raise fail(f"no job {job_id}")
    return job_id, job


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    no_scp: Annotated[bool, typer.Option("--no-scp", help="Run without the DICOM edge.")] = False,
) -> None:
    """Run the whole node: embedded redis, SCP, workers for all queues, HTTP status server."""
    from kneenode.serve import scp_available, serve

    settings = settings_for(ctx)
    if not no_scp and not scp_available():
        raise fail("this build has no Storage SCP (scp.server.start_scp); use --no-scp")
    state: CliState = ctx.obj
    try:
        serve(settings, state.config, with_scp=not no_scp)
    except NodeError as exc:
        raise fail(f"{exc.code}: {exc.message}. {exc.hint}") from None


@app.command("worker")
def worker_cmd(
    ctx: typer.Context,
    queues: Annotated[str, typer.Option(help="Comma-separated queues: gpu,cpu,io.")] = "gpu,cpu,io",
    processes: Annotated[int, typer.Option(min=1, help="Worker processes per queue group.")] = 1,
    threads: Annotated[int, typer.Option(min=1, help="Threads per cpu/io process.")] = 2,
    device: Annotated[str, typer.Option(help="GPU of the gpu processes: auto, cpu, cuda:K.")] = "auto",
) -> None:
    """Run only workers (extra GPU hosts): needs jobs.redis_url or a running serve."""
    settings = settings_for(ctx)
    names = [q.strip() for q in queues.split(",") if q.strip()]
    bad = [q for q in names if q not in ("gpu", "cpu", "io")]
    if bad or not names:
        raise fail(f"unknown queue(s) {bad}: use gpu, cpu, io")
    try:
        startup_stages(settings)
    except NodeError as exc:
        raise fail(f"{exc.code}: {exc.message}. {exc.hint}", 2) from None
    _, url = _store(settings)
    state: CliState = ctx.obj
    sup = Supervisor(settings, url, specs_for_worker(names, processes, threads, device),
                     state.config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sup.start()
    console.print(f"workers running on {names} (pids {sup.pids()}); Ctrl-C stops them")
    while not stop.wait(0.5):
        pass
    sup.stop()


@app.command("jobs")
def jobs_cmd(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many (newest first).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """List jobs, newest first.

    Below about 150 columns the table is compact: short IDs (which job, retry, cancel and purge
    accept), progress or error code next to the state, the description cut to fit.
    """
    store, _ = _store(settings_for(ctx))
    jobs = store.list_jobs(state, limit)
    if as_json:
        typer.echo(json.dumps(jobs, indent=2, default=str))
        return
    console.print(jobs_table(jobs, console.width))


@app.command("job")
def job_cmd(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job ID, full or short (as `jobs` lists it).")],
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of tables.")] = False,
) -> None:
    """Show one job: record, stages and events."""
    store, _ = _store(settings_for(ctx))
    job_id, job = _job(store, job_id)
    events = store.events(job_id)
    if as_json:
        typer.echo(json.dumps({**job, "events": events}, indent=2, default=str))
        return
    head = Table(show_header=False, title=f"job {job_id}")
    for key in ("state", "stage", "progress", "run", "attempts", "study_uid", "series_uid",
                "version", "source", "user", "calling_ae", "called_ae", "address", "route", "route_reason",
                "profile", "modality", "series_description", "instance_count", "closed_by",
                "completion_wait_s", "more_after_close", "previous_job", "reprocess_of",
                "reprocessed_as", "reason", "qc", "job_dir", "series_path"):
        head.add_row(key, str(job.get(key, "")))
    config = job.get("config")
    if isinstance(config, dict):
        head.add_row("chain", " -> ".join(s["name"] for s in config.get("chain", [])))
        if config.get("sets"):
            head.add_row("set", json.dumps(config["sets"]))
        for kind, card in (config.get("models") or {}).items():
            head.add_row(f"model.{kind}", json.dumps(card, default=str)[:300])
    err = job.get("error")
    if isinstance(err, dict):
        for key in ("code", "message", "hint"):
            head.add_row(f"error.{key}", str(err.get(key, "")))
    head.add_row("created", when(job.get("created")))
    console.print(head)
    change = job_change(job.get("job_dir"))
    if change is not None:
        console.print(change)
    stages = Table(title="stages")
    for col in ("stage", "state", "attempts", "start", "duration s", "worker"):
        stages.add_column(col)
    for name, st in job["stages"].items():
        dur = st.get("duration")
        stages.add_row(name, str(st.get("state", "")), str(st.get("attempts", "")),
                       when(st.get("start")), f"{dur:.3f}" if dur is not None else "",
                       str(st.get("worker", "")))
    console.print(stages)
    ev = Table(title="events")
    for col in ("time", "event", "details"):
        ev.add_column(col, overflow="fold")
    for e in events:
        details = {k: v for k, v in e.items() if k not in ("t", "kind")}
        ev.add_row(when(e["t"]), e["kind"], json.dumps(details, default=str) if details else "")
    console.print(ev)


def stage_queues(settings: Settings, job: dict[str, Any]) -> dict[str, str]:
    """Stage name -> queue from the job's own snapshot (the node's chain for older jobs)."""
    config = job.get("config")
    if isinstance(config, dict):
        return {s["name"]: s["queue"] for s in config["chain"]}
    return {s.name: s.queue for s in load_chain(settings)}  # jobs from before snapshots


@app.command("retry")
def retry_cmd(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job ID, full or short (as `jobs` lists it).")],
    from_stage: Annotated[str | None, typer.Option(help="Redo from this stage (default: the "
                                                   "failed stage, else the first).")] = None,
) -> None:
    """Run an ended job again (failed, cancelled or done), from a stage on.

    A live job (queued, running) whose stage message was lost is re-sent as it is; one that is
    still on its way is left alone (the node's reconciliation also re-sends stranded jobs).
    """
    settings = settings_for(ctx)
    store, url = _store(settings)
    job_id, job = _job(store, job_id)
    if job["state"].split(":")[0] not in TERMINAL:
        _resend_if_stranded(settings, store, url, job)
        return
    if job["state"] == "ignored":
        raise fail(f"job {job_id} is ignored ({job.get('reason', '')}): send the series again")
    if job.get("purged"):
        raise fail(f"job {job_id}'s folders were removed (purged): send the series again")
    config = job.get("config")
    queues = stage_queues(settings, job)
    chain: list[str] = job.get("chain") or []
    stage = from_stage or (job.get("stage") if job["state"] == "failed" else None) or chain[0]
    if stage not in chain or stage not in queues:
        raise fail(f"unknown stage '{stage}' (stages: {', '.join(chain)})")
    run = store.restart(job_id, stage)
    jobs = job_settings(settings, config).jobs  # the job's own time limits, not today's config
    enqueue_stage(make_broker(url, settings.jobs), jobs, job_id=job_id, stage=stage,
                  queue=queues[stage], run=run, rerun=True)
    console.print(f"job {job_id} queued again from stage '{stage}' (run {run}, profile "
                  f"'{job.get('profile') or 'default'}' as configured when it was created)")


@app.command("reprocess")
def reprocess_cmd(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job id whose spooled series to analyse again.")],
    profile: Annotated[str | None, typer.Option(help="Profile of the new job (default: the "
                                                "job's profile, as configured now).")] = None,
    sets: Annotated[list[str] | None, typer.Option(
        "--set", help="Override one key, e.g. --set segment.configuration=3d_cascade_fullres "
        "(repeatable).")] = None,
) -> None:
    """Make a new job, linked to JOB_ID, from the same spooled series with today's config."""
    settings = settings_for(ctx)
    store, url = _store(settings)
    job_id, job = _job(store, job_id)
    series_path = Path(str(job.get("series_path", "")))
    if job.get("purged") or not (series_path / "summary.json").is_file():
        raise fail(f"job {job_id}'s spooled series is gone ({series_path}): send the series again")
    try:
        overrides = parse_sets(sets or [])
        stages = startup_stages(settings)
        summary = json.loads((series_path / "summary.json").read_text(encoding="utf-8"))
        match = match_series(settings, summary)
        name = profile or job.get("profile") or match.target.profile
        config = build_config(settings, stages, match, profile=name, sets=overrides,
                              reprocess_of=job_id)
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    except OSError as exc:
        raise fail(f"cannot read the series summary: {exc}") from None
    except NodeError as exc:
        raise fail(f"{exc.code}: {exc.message}. {exc.hint}", 2) from None
    new_id = store.create_linked(job, {**job_fields(summary, match), "profile": config.profile})
    job_dir = settings.data_dir / "jobs" / new_id
    job_dir.mkdir(parents=True, exist_ok=True)
    dispatch(settings, store, make_broker(url, settings.jobs), new_id, job_dir, config)
    console.print(f"job {new_id} queued: series of {job_id} with profile '{config.profile}'"
                  + (f" and --set {json.dumps(overrides)}" if overrides else ""))


def _resend_if_stranded(settings: Settings, store: JobStore, url: str, job: dict[str, Any]) -> None:
    from workers.reconcile import reconcile_jobs

    queues = {s.name: s.queue for s in startup_stages(settings)}
    sent = reconcile_jobs(store, make_broker(url, settings.jobs), settings, queues,
                          job_ids=[job["id"]], grace_s=0)
    if not sent:
        raise fail(f"job {job['id']} is {job['state']} and its stage '{job.get('stage')}' is "
                   "queued or running: nothing to retry (cancel it first to start over)")
    console.print(f"job {job['id']} had no message for stage '{job['stage']}': sent again")


@app.command("cancel")
def cancel_cmd(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job ID, full or short (as `jobs` lists it).")],
) -> None:
    """Cancel a job: no further stage starts; a running stage may finish or stop early."""
    store, _ = _store(settings_for(ctx))
    job_id, job = _job(store, job_id)
    if not store.cancel(job_id):
        raise fail(f"job {job_id} already ended ({job['state']})")
    console.print(f"job {job_id} cancelled")

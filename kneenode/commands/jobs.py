"""Job commands: ``serve``, ``worker``, ``jobs``, ``job``, ``retry``, ``reprocess``, ``resend``,
``cancel`` (the actions themselves are :mod:`workers.actions`, shared with the web console)."""

from __future__ import annotations

import getpass
import json
import signal
import threading
from collections.abc import Callable
from typing import Annotated, Any

import typer
from dramatiq.brokers.redis import RedisBroker
from rich.console import Console
from rich.table import Table

from kneenode.changeview import job_change
from kneenode.cli_app import CliState, app, fail, settings_for
from kneenode.errors import NodeError
from kneenode.joblist import jobs_table, when
from kneenode.settings import Settings
from workers import actions
from workers.actions import ActionError, Outcome
from workers.broker import make_broker, make_client, resolve_redis_url
from workers.jobconfig import startup_stages
from workers.jobstate import JobStore
from workers.supervisor import Supervisor, specs_for_worker

console = Console()


def _store(settings: Settings) -> tuple[JobStore, str]:
    try:
        url = resolve_redis_url(settings)
    except NodeError as exc:
        raise fail(f"{exc.message}. {exc.hint}") from None
    return JobStore(make_client(url), settings.jobs.namespace), url


def _job(store: JobStore, given: str) -> tuple[str, dict[str, Any]]:
    """The full ID and record of a job given by its full or short ID."""
    try:
        job = actions.find_job(store, given)
    except ActionError as exc:
        raise fail(exc.message) from None
    return job["id"], job


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
    for key in ("prior_of", "priors", "change"):  # follow-up exams (docs/priors.md)
        if job.get(key):
            value = job[key]
            head.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
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


def _act(action: Callable[[], Outcome], usage_exit: int = 1) -> None:
    """Run one of :mod:`workers.actions` and print its outcome; a refusal exits with its message
    (``usage_exit`` for a bad value the user gave, e.g. an unknown profile)."""
    try:
        outcome = action()
    except ActionError as exc:
        if exc.status == 400 and usage_exit != 1:
            shown = f"{exc.code}: {exc.message}. {exc.hint}" if exc.hint else exc.message
            raise fail(shown, usage_exit) from None
        raise fail(exc.message) from None
    console.print(outcome.message)


def _node(ctx: typer.Context) -> tuple[Settings, JobStore, RedisBroker]:
    settings = settings_for(ctx)
    store, url = _store(settings)
    return settings, store, make_broker(url, settings.jobs)


def user_name() -> str:
    """Who runs the command, for the job's events (``unknown`` in a container without one)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


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
    settings, store, broker = _node(ctx)
    _act(lambda: actions.retry(settings, store, broker, job_id, from_stage=from_stage,
                               user=user_name()))


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
    settings, store, broker = _node(ctx)
    _act(lambda: actions.reprocess(settings, store, broker, job_id, profile=profile,
                                   sets=sets or [], user=user_name()), usage_exit=2)


@app.command("resend")
def resend_cmd(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job ID, full or short (done or failed).")],
    to: Annotated[str, typer.Option("--to", help="One of the job's destinations, "
                                    "AET@HOST:PORT (as `job` shows them).")],
) -> None:
    """Send a job's existing results again to one of its destinations."""
    settings, store, broker = _node(ctx)
    _act(lambda: actions.resend(settings, store, broker, job_id, to, user=user_name()))


@app.command("cancel")
def cancel_cmd(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job ID, full or short (as `jobs` lists it).")],
) -> None:
    """Cancel a job: no further stage starts; a running stage may finish or stop early."""
    store, _ = _store(settings_for(ctx))
    _act(lambda: actions.cancel(store, job_id, user=user_name()))

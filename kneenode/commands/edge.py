"""Network edge commands: ``kneenode scp``, ``kneenode echo``, ``kneenode send``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from kneenode.cli_app import app, fail, settings_for
from kneenode.logs import get_logger
from kneenode.settings import Settings
from kneenode.signals import wait_for_stop_signal
from scp.announce import CompletedSeries, OnComplete
from scp.sender import Destination, FileResult, collect_files, echo, send_files
from scp.server import start_scp

log = get_logger("kneenode.scp")


def _log_only(series: CompletedSeries) -> None:
    log.info("series ready", study_uid=series.study_uid, series_uid=series.series_uid,
             version=series.version, instances=series.summary.get("instance_count"),
             path=str(series.path))


def _job_creator(settings: Settings) -> OnComplete:
    """Jobs for completed series go to the shared redis (jobs.redis_url or a running serve)."""
    from kneenode.errors import NodeError
    from workers.broker import make_broker, make_client, resolve_redis_url
    from workers.intake import make_on_complete
    from workers.jobstate import JobStore
    from workers.stages import load_chain

    try:
        url = resolve_redis_url(settings)
        chain = load_chain(settings)
    except NodeError as exc:
        raise fail(f"{exc.message}. {exc.hint} (or run the edge alone with --no-jobs)", 2) from None
    store = JobStore(make_client(url), settings.jobs.namespace)
    return make_on_complete(settings, store, make_broker(url, settings.jobs), chain)


@app.command("scp")
def scp_command(
    ctx: typer.Context,
    no_jobs: Annotated[bool, typer.Option(
        "--no-jobs", help="Edge only: complete series are kept and logged, no jobs are created.",
    )] = False,
) -> None:
    """Run only the DICOM edge: Storage SCP, spool and series completion.

    Jobs for complete series are created in the shared redis (jobs.redis_url, or the embedded
    redis of a running `kneenode serve` on the same data_dir); workers run elsewhere.
    """
    settings = settings_for(ctx)
    on_complete = _log_only if no_jobs else _job_creator(settings)
    try:
        handle = start_scp(settings, on_complete)
    except OSError as exc:
        raise fail(f"cannot listen on {settings.scp.host}:{settings.scp.port}: {exc}") from None
    typer.echo(f"kneenode SCP {settings.scp.ae_title} listening on port {handle.port}", err=True)
    wait_for_stop_signal()
    handle.stop()


def _destination(text: str) -> Destination:
    try:
        return Destination.parse(text)
    except ValueError as exc:
        raise fail(str(exc), 2) from None


@app.command("echo")
def echo_command(
    ctx: typer.Context,
    destination: Annotated[str, typer.Argument(help="AET@HOST:PORT of the peer.")],
    calling_ae: Annotated[str, typer.Option("--aet", help="Our calling AE title.")] = "KNEENODE",
) -> None:
    """C-ECHO a DICOM peer (exit 0 when it answers Success)."""
    settings_for(ctx)
    dest = _destination(destination)
    status = echo(dest, calling_ae=calling_ae)
    if status is None:
        raise fail(f"no association with {dest} (rejected, unreachable or timed out)")
    if status != 0:
        raise fail(f"{dest} answered C-ECHO with status 0x{status:04X}")
    typer.echo(f"C-ECHO {dest}: success")


@app.command("send")
def send_command(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (recursive).")],
    to: Annotated[str, typer.Option("--to", help="AET@HOST:PORT of the receiver.")],
    calling_ae: Annotated[str, typer.Option("--aet", help="Our calling AE title.")] = "KNEENODE",
) -> None:
    """C-STORE files or folders to a DICOM peer over one association, with a progress bar."""
    settings_for(ctx)
    dest = _destination(to)
    try:
        files = collect_files(paths)
    except FileNotFoundError as exc:
        raise fail(str(exc), 2) from None
    columns = (TextColumn("sending"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("send", total=len(files))

        def advance(_: FileResult) -> None:
            progress.advance(task)

        report = send_files(files, dest, calling_ae=calling_ae, on_progress=advance)
    for r in report.failed:
        status = "no answer" if r.status is None else f"0x{r.status:04X}"
        typer.echo(f"failed: {r.path} ({status}) {r.detail}", err=True)
    typer.echo(f"sent {len(report.sent)}/{len(report.results)} to {dest}")
    if not report.ok:
        raise fail(report.error or f"{len(report.failed)} file(s) not stored")

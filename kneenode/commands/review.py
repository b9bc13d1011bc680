"""Review commands: ``release`` and ``discard`` a job held after failed QC (``qc.on_fail = hold``)."""

from __future__ import annotations

import getpass
from typing import Annotated

import typer

from kneenode.cli_app import app, fail, settings_for
from kneenode.commands.jobs import _store, console, resolve_job_id
from kneenode.errors import NodeError
from workers.actors import enqueue_stage
from workers.broker import make_broker
from workers.review import discard, release
from workers.stages import load_chain

JobId = Annotated[str, typer.Argument(help="Job id, full or short (state review).")]
Operator = Annotated[str | None, typer.Option(help="Who decided (recorded; default: the user).")]


@app.command("release")
def release_cmd(ctx: typer.Context, job_id: JobId, operator: Operator = None) -> None:
    """Deliver a job held after failed QC: it continues, its results flagged as failed QC."""
    settings = settings_for(ctx)
    store, url = _store(settings)
    queues = {s.name: s.queue for s in load_chain(settings)}
    job_id = resolve_job_id(store, job_id)
    try:
        stage, run = release(store, job_id, operator or getpass.getuser())
    except NodeError as exc:
        raise fail(exc.message) from None
    if stage not in queues:
        raise fail(f"job {job_id}: stage '{stage}' is not in this node's chain")
    enqueue_stage(make_broker(url, settings.jobs), settings.jobs, job_id=job_id, stage=stage,
                  queue=queues[stage], run=run)
    console.print(f"job {job_id} released: continues with stage '{stage}', results flagged")


@app.command("discard")
def discard_cmd(ctx: typer.Context, job_id: JobId, operator: Operator = None) -> None:
    """Drop a job held after failed QC: nothing is delivered (the job ends cancelled)."""
    store, _ = _store(settings_for(ctx))
    job_id = resolve_job_id(store, job_id)
    try:
        discard(store, job_id, operator or getpass.getuser())
    except NodeError as exc:
        raise fail(exc.message) from None
    console.print(f"job {job_id} discarded: nothing delivered")

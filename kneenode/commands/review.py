"""Review commands: ``release`` and ``discard`` a job held after failed QC (``qc.on_fail = hold``)."""

from __future__ import annotations

from typing import Annotated

import typer

from kneenode.cli_app import app, settings_for
from kneenode.commands.jobs import _act, _node, _store, user_name
from workers import actions

JobId = Annotated[str, typer.Argument(help="Job id, full or short (state review).")]
Operator = Annotated[str | None, typer.Option(help="Who decided (recorded; default: the user).")]


@app.command("release")
def release_cmd(ctx: typer.Context, job_id: JobId, operator: Operator = None) -> None:
    """Deliver a job held after failed QC: it continues, its results flagged as failed QC."""
    settings, store, broker = _node(ctx)
    _act(lambda: actions.release(settings, store, broker, job_id, user=operator or user_name()))


@app.command("discard")
def discard_cmd(ctx: typer.Context, job_id: JobId, operator: Operator = None) -> None:
    """Drop a job held after failed QC: nothing is delivered (the job ends cancelled)."""
    store, _ = _store(settings_for(ctx))
    _act(lambda: actions.discard(store, job_id, user=operator or user_name()))

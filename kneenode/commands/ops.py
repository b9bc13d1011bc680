"""Operations commands: ``kneenode purge`` (remove finished jobs' folders on purpose)."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console

from kneenode.cli_app import app, fail, settings_for
from kneenode.commands.jobs import _store
from workers.retention import all_jobs, apply, plan_manual, run_retention

console = Console()


@app.command("purge")
def purge_cmd(
    ctx: typer.Context,
    job_ids: Annotated[list[str] | None, typer.Argument(help="Jobs to remove (any ended state).")] = None,
    state: Annotated[list[str] | None, typer.Option("--state", help="Remove every job in this "
                                                    "ended state (failed, done, ignored, cancelled).")] = None,
    older_than: Annotated[float, typer.Option(help="With --state: only jobs ended this many days ago.")] = 0.0,
    policy: Annotated[bool, typer.Option("--policy", help="Apply the automatic retention policy now.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed.")] = False,
) -> None:
    """Remove spool and job folders of ended jobs (records and events are kept as history).

    Active jobs (queued, running, retrying) are never removed. Without arguments nothing happens.
    """
    settings = settings_for(ctx)
    store, _ = _store(settings)
    if policy:
        removed = run_retention(settings, store)
        console.print(f"retention policy removed {len(removed)} job folder set(s)")
        return
    bad = set(state or []) - {"failed", "done", "ignored", "cancelled"}
    if bad:
        raise fail(f"--state takes ended states only, not {sorted(bad)}", 2)
    if not job_ids and not state:
        raise fail("name job ids, --state or --policy", 2)
    items = plan_manual(all_jobs(store), job_ids=set(job_ids or []), states=set(state or []),
                        older_than_days=older_than, now=time.time())
    for item in items:
        console.print(f"{'would remove' if dry_run else 'removing'} {item.job_id} ({item.state}): "
                      + ", ".join(str(p) for p in item.paths), highlight=False)
    if not dry_run:
        apply(store, items)
    missing = set(job_ids or []) - {i.job_id for i in items}
    if missing:
        raise fail(f"not removed (unknown, active or already purged): {', '.join(sorted(missing))}")

"""Operations commands: ``kneenode purge`` (remove ended jobs' folders), ``kneenode demo``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kneenode.cli_app import app, fail, settings_for
from kneenode.commands.analysis import PresetName
from kneenode.commands.jobs import _job, _store
from kneenode.demo import DemoResult
from workers.retention import all_jobs, apply, plan_manual, run_retention

console = Console()


@app.command("purge")
def purge_cmd(
    ctx: typer.Context,
    job_ids: Annotated[list[str] | None, typer.Argument(
        help="Jobs to remove (any ended state), full or short IDs.")] = None,
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
    job_ids = [_job(store, j)[0] for j in job_ids or []]
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


@app.command("demo")
def demo_cmd(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Option(help="Where the demo keeps everything.")] = Path("data/demo"),
    seed: Annotated[int, typer.Option(help="Phantom seed.")] = 1,
    preset: Annotated[PresetName, typer.Option(
        help="Phantom size: small (64x64x48) or full (384x384x160, a real knee's size; "
        "minutes on a CPU).")] = PresetName.small,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the job.")] = 900,
    keep: Annotated[bool, typer.Option(help="Keep the node and Orthanc running afterwards, "
                                       "until Ctrl-C.")] = False,
) -> None:
    """Start the node and an Orthanc, send a synthetic knee, wait, show what reached Orthanc."""
    from kneenode.demo import run_demo

    settings = settings_for(ctx)
    try:
        result = run_demo(settings, folder.resolve(), seed=seed, preset=preset.value,
                          timeout=timeout, keep=keep,
                          say=lambda text: console.print(f"[dim]demo:[/] {text}", highlight=False),
                          show=_show_demo)
    except (TimeoutError, RuntimeError, FileNotFoundError) as exc:
        raise fail(str(exc)) from None
    job = result.job
    if job["state"] != "done":
        error = job.get("error") or {}
        what = "is held for review (docs/qc.md)" if job["state"] == "review" else f"ended {job['state']}"
        raise fail(f"the job {what}: {error.get('code', '')} {error.get('message', '')}")


def _show_demo(result: DemoResult) -> None:
    table = Table(title=f"study {result.study_uid} in Orthanc ({result.orthanc_url})")
    for column in ("modality", "series", "instances"):
        table.add_column(column)
    for s in sorted(result.orthanc_series, key=lambda s: int(s.get("SeriesNumber") or 0)):
        table.add_row(s.get("Modality", ""), s.get("SeriesDescription", ""), str(s["instances"]))
    console.print(table)
    job = result.job
    console.print(f"job {job['id']}: {job['state']}; job folder {job.get('job_dir', '')}")

"""``kneenode history export|list``: the results history as a cohort table, and per patient."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from kneenode.cli_app import app, fail, settings_for
from kneenode.errors import NodeError
from kneenode.fsio import write_text_atomic
from kneenode.history import HistoryStore, open_history

history_app = typer.Typer(help="Results history per patient pseudonym (docs/history.md).",
                          no_args_is_help=True)
app.add_typer(history_app, name="history")


def _open(ctx: typer.Context) -> HistoryStore:
    settings = settings_for(ctx, configure_logs=False)
    try:
        return open_history(settings)
    except NodeError as exc:
        raise fail(f"{exc.code}: {exc.message}") from None


@history_app.command("export")
def export_cmd(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Argument(help="CSV file to write; default: stdout.")] = None,
    csv_format: Annotated[bool, typer.Option("--csv", help="CSV (the only format).")] = True,
    include_superseded: Annotated[bool, typer.Option(
        "--all", help="Also exams superseded by a later job of the same series and model.")] = False,
) -> None:
    """One row per exam and knee with the research pipeline's column names; a written FILE is
    read back and compared with the database."""
    from kneenode.history.export import compare, csv_text, read_csv

    del csv_format
    with _open(ctx) as store:
        exams = store.all_exams(include_superseded)
    text = csv_text(exams)
    if file is None or str(file) == "-":
        sys.stdout.write(text)
        return
    write_text_atomic(file, text)
    problems = compare(exams, read_csv(file))
    if problems:
        raise fail(f"{file}: read back differs: {problems[0]} ({len(problems)} differences)")
    typer.echo(f"wrote {len(exams)} exams to {file} (read back: identical)")


@history_app.command("list")
def list_cmd(
    ctx: typer.Context,
    pseudonym: Annotated[str | None, typer.Option(help="Only this pseudonym (or its start).")] = None,
) -> None:
    """Per pseudonym and knee: how many exams, first and last date, models. No names."""
    with _open(ctx) as store:
        rows = [r for r in store.patients()
                if pseudonym is None or r["pseudonym"].startswith(pseudonym)]
        if pseudonym is not None:
            exams = [e for e in store.all_exams() if e.pseudonym.startswith(pseudonym)]
    console = Console(width=max(100, Console().width))
    if not rows:
        console.print("no exams in the history" + (f" for {pseudonym}" if pseudonym else ""))
        return
    table = Table("pseudonym", "side", "exams", "first", "last", "models", box=None)
    for r in rows:
        table.add_row(r["pseudonym"][:16], r["side"] or "?", str(r["exams"]), str(r["first"] or ""),
                      str(r["last"] or ""), ", ".join(r["models"]))
    console.print(table)
    if pseudonym is not None:
        detail = Table("date", "side", "job", "model", "qc", "med_wb_fem_cart_mm_mean", box=None)
        for e in exams:
            value = e.measurements.get("med_wb_fem_cart_mm_mean")
            detail.add_row(str(e.exam_date or ""), e.side or "?", e.job_id, e.model_key,
                           e.qc_outcome or "", "" if value is None else f"{value:.3f}")
        console.print(detail)

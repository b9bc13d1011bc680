"""The ``kneenode jobs`` table: readable in an 80-column terminal, complete in a wide one.

Why two layouts: a full job ID (``20261201-083412-a1b2c3``), the series UID tail, how the series
was closed, the error code, a full time stamp, the route and the profile need about 170 columns;
rich folds them into four-line rows at 80. In a narrower terminal (:func:`jobs_table` measures) the table shows the
short ID (the random tail, which ``kneenode job``, ``retry``, ``cancel`` and ``purge`` accept),
merges progress and error code into the state column, and cuts the description rather than
wrapping anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.table import Table

MIN_DESCRIPTION = 16  # characters of the description the full layout must leave


def short_id(job_id: str) -> str:
    """The random tail of a job ID (``a1b2c3`` of ``20261201-083412-a1b2c3``)."""
    tail = job_id.rsplit("-", 1)[-1]
    return tail if tail != job_id else job_id[-8:]


def when(ts: Any, compact: bool = False) -> str:
    """A record's time stamp (epoch seconds) as UTC text; empty when unset."""
    if not ts:
        return ""
    return datetime.fromtimestamp(float(ts), UTC).strftime("%m-%d %H:%M" if compact
                                                           else "%Y-%m-%d %H:%M:%S")


def _error_code(job: dict[str, Any]) -> str:
    err = job.get("error")
    return str(err.get("code", "")) if isinstance(err, dict) else ""


_COMPACT = ("id", "state", "description", "from", "updated")
_FULL = ("id", "state", "progress", "series", "v", "description", "from", "route", "profile",
         "closed", "error", "updated")


def _compact_row(job: dict[str, Any]) -> tuple[str, ...]:
    """id, state (with progress while running, else with the error code), description, calling
    AE (at most 10 characters), last update."""
    state = str(job.get("state", ""))
    code = _error_code(job)
    if state.startswith("running"):
        state += f" {100 * float(job.get('progress', 0)):.0f}%"
    elif code:
        state += f" {code}"
    ae = str(job.get("calling_ae", ""))
    return (short_id(str(job["id"])), state, str(job.get("series_description", "")),
            ae if len(ae) <= 10 else ae[:9] + "…", when(job.get("updated"), compact=True))


def closed_text(job: dict[str, Any]) -> str:
    """How the job's series was closed, and ``+N late`` when more came after an early close."""
    text = str(job.get("closed_by") or "")
    more = job.get("more_after_close")
    return f"{text} +{more} late" if more else text


def _full_row(job: dict[str, Any]) -> tuple[str, ...]:
    return (str(job["id"]), str(job.get("state", "")), f"{100 * float(job.get('progress', 0)):.0f}%",
            "..." + str(job.get("series_uid", ""))[-12:], str(job.get("version", "")),
            str(job.get("series_description", "")), str(job.get("calling_ae", "")),
            str(job.get("route", "")), str(job.get("profile", "")),
            closed_text(job), _error_code(job), when(job.get("updated")))


def _widths(names: Sequence[str], rows: Sequence[tuple[str, ...]], width: int) -> list[int]:
    """Column widths: each column its longest cell, the description what is left of ``width``
    (each column costs three more characters: padding and separator, less one at the edges)."""
    widths = [max([len(r[i]) for r in rows] + [len(name)]) for i, name in enumerate(names)]
    d = names.index("description")
    rest = width - (sum(widths) - widths[d]) - 3 * len(names) + 1
    widths[d] = max(0, min(widths[d], rest))
    return widths


def jobs_table(jobs: Sequence[dict[str, Any]], width: int) -> Table:
    """The job list for a terminal ``width`` columns wide.

    The full layout when it fits with at least :data:`MIN_DESCRIPTION` characters of the
    description, else the compact one. Every column but the description keeps its full width
    (IDs, states and codes are never cut or wrapped); the description gets what is left and is
    cut with an ellipsis.
    """
    full_rows = [_full_row(j) for j in jobs]
    compact = _widths(_FULL, full_rows, width)[_FULL.index("description")] < MIN_DESCRIPTION
    names = _COMPACT if compact else _FULL
    rows = [_compact_row(j) for j in jobs] if compact else full_rows
    title = f"{len(jobs)} job(s)" + (" (short IDs; wider terminal: full IDs)" if compact else "")
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    for name, w in zip(names, _widths(names, rows, width), strict=True):
        table.add_column(name, no_wrap=True, overflow="ellipsis", width=max(w, 1))
    for r in rows:
        table.add_row(*r)
    return table

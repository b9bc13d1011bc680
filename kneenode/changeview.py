"""The change since the prior exam on the console (``kneenode job ID``): one table, or one line.

Reads the job's ``results.json`` ``change`` section (docs/change.md) as written, so the console
shows the numbers the SR and the PDF carry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.table import Table


def _num(value: Any, digits: int, sign: bool = False) -> str:
    if value is None:
        return "-"
    shown = round(float(value), digits) + 0.0
    return f"{shown:+.{digits}f}" if sign else f"{shown:.{digits}f}"


def change_view(change: Mapping[str, Any]) -> Table | str:
    """A table of the comparison (thickness per region, volume per plate), or why there is none."""
    if change.get("status") != "compared" or not change.get("prior"):
        return f"change: {change.get('status')} - {change.get('reason', '')}"
    prior = change["prior"]
    table = Table(title=f"change since {prior['study_date']} ({change.get('interval_days')} days; "
                        f"flagged: |change| > smallest detectable change)")
    for col in ("region", "prior", "current", "change", "%/year", "flag"):
        table.add_column(col, justify="left" if col == "region" else "right")
    for t in change.get("thickness", []):
        table.add_row(t["region"], _num(t["prior_mm"], 2), _num(t["current_mm"], 2),
                      _num(t["change_mm"], 2, True) + " mm", _num(t["change_percent_per_year"], 1, True),
                      "FLAGGED" if t["flagged"] else "")
    for v in change.get("volume", []):
        table.add_row(f"{v['tissue']} volume", _num(v["prior_mm3"], 0), _num(v["current_mm3"], 0),
                      _num(v["change_mm3"], 0, True) + " mm3",
                      _num(v["change_percent_per_year"], 1, True), "FLAGGED" if v["flagged"] else "")
    return table


def job_change(job_dir: str | Path | None) -> Table | str | None:
    """The change view of a job folder's results.json; None when it has no change report."""
    path = Path(job_dir) / "results.json" if job_dir else None
    if path is None or not path.is_file():
        return None
    try:
        change = json.loads(path.read_text(encoding="utf-8")).get("change")
    except (OSError, ValueError):
        return None
    return change_view(change) if isinstance(change, Mapping) else None

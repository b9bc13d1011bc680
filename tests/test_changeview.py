"""The console view of the change (``kneenode job ID``) shows the report's numbers."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from kneenode.changeview import change_view, job_change
from tests.pipeline.encode.synthetic import make_card, make_change, make_results


def _text(view: object) -> str:
    console = Console(record=True, width=120)
    console.print(view)
    return console.export_text()


def test_table_of_a_comparison_and_one_line_without(tmp_path: Path) -> None:
    change = make_change(make_results(), make_card())
    text = _text(change_view(change))
    assert "change since 2026-01-01 (400 days" in text
    row = next(line for line in text.splitlines() if "med_wb_fem_cart" in line)
    assert "1.90" in row and "1.60" in row and "-0.30 mm" in row and "FLAGGED" in row
    row = next(line for line in text.splitlines() if "med_tib_cart volume" in line)
    assert "-200 mm3" in row and "FLAGGED" in row
    assert "FLAGGED" not in next(line for line in text.splitlines() if "lat_tib_cart " in line)
    none = change_view({"status": "no_prior", "reason": "no comparison: no earlier exam"})
    assert none == "change: no_prior - no comparison: no earlier exam"
    (tmp_path / "results.json").write_text(json.dumps({"change": change}))
    assert job_change(tmp_path) is not None
    (tmp_path / "results.json").write_text(json.dumps({"change": None}))
    assert job_change(tmp_path) is None and job_change(None) is None
    assert job_change(tmp_path / "missing") is None

"""The README documents every settings key and error code (tables generated from the code)."""

from __future__ import annotations

from pathlib import Path

from kneenode.configfile import with_generated_tables

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_settings_table_is_current():
    text = README.read_text(encoding="utf-8")
    assert text == with_generated_tables(text), (
        "README tables are stale: run `.venv/bin/python -m kneenode.configfile README.md`"
    )


def test_readme_shows_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert "make serve" in text and "make test" in text

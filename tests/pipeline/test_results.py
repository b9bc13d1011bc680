"""results.json's schema (pipeline.results): the committed JSON Schema, validation, the CSV."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from kneenode.errors import ErrorCode, NodeError
from pipeline.results import (
    CSV_COLUMNS,
    RESULTS_CSV_COLUMNS,
    SCHEMA_VERSION,
    read_results,
    schema_text,
    update_results,
    validate_results,
)

SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "results.schema.json"
OLD_REGIONS = ("ant_fem_cart", "med_wb_fem_cart", "lat_wb_fem_cart", "med_post_fem_cart",
               "lat_post_fem_cart", "med_tib_cart", "lat_tib_cart", "pat_cart")


def test_committed_json_schema_is_current() -> None:
    """docs/results.schema.json is what the model generates (regenerate with
    ``python -m pipeline.results docs/results.schema.json``)."""
    assert SCHEMA.read_text(encoding="utf-8") == schema_text()
    schema = json.loads(schema_text())
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert schema["additionalProperties"] is False


def test_update_merges_validates_and_writes_the_csv(tmp_path: Path) -> None:
    first = update_results(tmp_path, {"study_uid": "1.2.3", "side": "right",
                                      "pat_cart_mm_mean": 2.5, "seconds": {"a": 1.0}})
    assert first["schema_version"] == SCHEMA_VERSION and first["bscore"] is None
    merged = update_results(tmp_path, {"bscore": 0.25, "seconds": {"b": 2.0}})
    assert merged["pat_cart_mm_mean"] == 2.5 and merged["seconds"] == {"a": 1.0, "b": 2.0}
    assert read_results(tmp_path) == merged
    rows = list(csv.reader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert rows[0] == list(RESULTS_CSV_COLUMNS) and len(rows) == 2
    assert RESULTS_CSV_COLUMNS[:len(CSV_COLUMNS)] == CSV_COLUMNS  # the research columns first
    row = dict(zip(rows[0], rows[1], strict=True))
    assert row["study_uid"] == "1.2.3" and row["pat_cart_mm_mean"] == "2.5"
    assert row["bscore"] == "0.25" and row["med_tib_cart_mm_std"] == ""  # null -> empty cell


def test_csv_has_the_research_pipelines_column_names() -> None:
    """``<region>_mm_{mean,std,median}`` and ``<region>_t2_ms_{mean,std,median}`` for the old
    pipeline's eight regions, in its order (knee-pipeline-facts.md)."""
    for region in OLD_REGIONS:
        for kind in ("mm", "t2_ms"):
            names = [f"{region}_{kind}_{s}" for s in ("mean", "std", "median")]
            i = CSV_COLUMNS.index(names[0])
            assert list(CSV_COLUMNS[i:i + 3]) == names
    assert {"bscore", "nsm_assd_bone_mm", "nsm_assd_cart_mm", "femur_ml", "side"} <= set(CSV_COLUMNS)


@pytest.mark.parametrize(("data", "key"), [
    ({"unknown_key": 1}, "unknown_key"),
    ({"pat_cart_mm_mean": "thick"}, "pat_cart_mm_mean"),
    ({"side": "up"}, "side"),
    ({"schema_version": 2}, "schema_version"),
])
def test_a_key_outside_the_schema_is_an_error_naming_it(data: dict, key: str, tmp_path: Path) -> None:
    with pytest.raises(NodeError) as err:
        update_results(tmp_path, data)
    assert err.value.code is ErrorCode.PIPELINE_ERROR and key in err.value.message
    assert not (tmp_path / "results.json").exists()
    assert validate_results({})["schema_version"] == SCHEMA_VERSION

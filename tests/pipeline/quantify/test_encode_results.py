"""The quantify results feed the encoders unchanged: the SR carries them back, the PDF draws the
femoral thickness map (the contract the encode stage relies on)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kneenode.settings import EncodeSettings
from pipeline.encode import encode_results, read_sr_measurements
from pipeline.phantom import make_phantom, write_phantom
from pipeline.quantify import THICKNESS_REGIONS, Geometry, quantify


def test_results_round_trip_through_the_sr_and_the_pdf_map(tmp_path: Path) -> None:
    ph = make_phantom(42, "small", side="right", orientation="coronal")
    paths = write_phantom(ph, tmp_path / "ph")
    q = quantify(ph.labels, Geometry.of(ph.grid.spacing, ph.grid.origin, ph.grid.direction))
    assert q.thickness_map is not None
    encoded = encode_results(
        source=list(paths.dicom_files), labels=q.subregions, results=q.results,
        model={"algorithm_name": "kneenode test", "algorithm_version": "0", "is_demo": True},
        options=EncodeSettings(seg_subregions=True, overlay=False), thickness_map=q.thickness_map.values,
    )
    assert encoded.sr is not None and encoded.pdf is not None
    back = read_sr_measurements(encoded.sr)
    assert back["side"] == "right"
    for region in THICKNESS_REGIONS:
        for stat in ("mean", "median", "std"):
            key = f"{region}_mm_{stat}"
            assert back[key] == pytest.approx(q.results[key], abs=1e-3), key
    for key in ("femur_ml", "fem_cart_ml", "pat_cart_ml", "lat_men_ml"):
        assert back[key] == pytest.approx(q.results[key], rel=1e-4)
    assert not any("_t2_ms_" in k for k in back)  # null T2 (no qDESS) is left out, not written as 0

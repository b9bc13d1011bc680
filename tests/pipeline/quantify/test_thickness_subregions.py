"""Side, femoral subregions, thickness and volumes against the phantoms' analytic truth."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.phantom import Phantom
from pipeline.quantify import THICKNESS_REGIONS, Geometry, femoral_subregions, knee_side, quantify
from tests.pipeline.quantify.conftest import THICKNESS


def _geom(ph: Phantom) -> Geometry:
    return Geometry.of(ph.grid.spacing, ph.grid.origin, ph.grid.direction)


@pytest.fixture(scope="module")
def quantified(medium_phantoms: list[Phantom]) -> list[dict]:
    """quantify() of each medium phantom's truth label map."""
    return [quantify(ph.labels, _geom(ph)).results for ph in medium_phantoms]


def test_side_of_both_sides_in_every_orientation(medium_phantoms: list[Phantom], quantified: list[dict]) -> None:
    for ph, res in zip(medium_phantoms, quantified, strict=True):
        g = ph.grid
        assert knee_side(ph.labels, g.direction, g.spacing, g.origin) == ph.side
        assert res["side"] == ph.side
    assert {ph.side for ph in medium_phantoms} == {"left", "right"}


def test_subregions_match_the_truth_map(medium_phantoms: list[Phantom]) -> None:
    for ph in medium_phantoms:
        sub = femoral_subregions(ph.labels, _geom(ph))
        assert sub.reason is None
        fem = ph.labels == 4
        agree = float(np.mean(sub.labels[fem] == ph.subregions[fem]))
        assert agree > 0.95, (ph.orientation, agree)
        # medial and lateral are never swapped
        for a, b in ((12, 13), (14, 15), (13, 12), (15, 14)):
            assert not np.any((ph.subregions == a) & (sub.labels == b))
        assert np.array_equal(sub.labels[~fem], ph.labels[~fem])


def test_thickness_mean_abs_error_per_region_at_most_0_1_mm(
    medium_phantoms: list[Phantom], quantified: list[dict]
) -> None:
    errors = {r: [] for r in THICKNESS_REGIONS}
    for ph, res in zip(medium_phantoms, quantified, strict=True):
        for region in THICKNESS_REGIONS:
            truth = ph.truth["thickness_mm"][f"{region}_mm_mean"]
            assert truth == THICKNESS[region]
            errors[region].append(res[f"{region}_mm_mean"] - truth)
            assert 0.0 < res[f"{region}_mm_std"] < 0.6
            # the median sees the voxel quantisation of a plate 3-4 voxels thick (not averaged out)
            assert abs(res[f"{region}_mm_median"] - truth) < 0.2
    print("\nregion              MAE (mm)  errors per phantom")
    for region, errs in errors.items():
        mae = float(np.mean(np.abs(errs)))
        print(f"{region:20s} {mae:.3f}    {' '.join(f'{e:+.3f}' for e in errs)}")
        assert mae <= 0.1, (region, errs)


def test_volumes_within_2_percent(medium_phantoms: list[Phantom], quantified: list[dict]) -> None:
    for ph, res in zip(medium_phantoms, quantified, strict=True):
        for key, truth in ph.truth["volumes_ml"].items():
            assert res[key] == pytest.approx(truth, rel=0.02), key
            assert res[key] == pytest.approx(ph.truth["label_volumes_ml"][key], abs=1e-4), key


def test_result_keys_are_the_reference_names(quantified: list[dict]) -> None:
    res = quantified[0]
    for region in THICKNESS_REGIONS:
        for stat in ("mean", "median", "std"):
            assert isinstance(res[f"{region}_mm_{stat}"], float)
            assert f"{region}_t2_ms_{stat}" in res and res[f"{region}_t2_ms_{stat}"] is None
            assert f"{region}_deep_t2_ms_{stat}" in res
    for key in ("femur_ml", "tibia_ml", "patella_ml", "fem_cart_ml", "med_tib_cart_ml", "lat_tib_cart_ml",
                "pat_cart_ml", "med_men_ml", "lat_men_ml"):
        assert res[key] > 0
    assert res["units"] == {"thickness": "mm", "t2": "ms", "volume": "mL"}
    assert res["algorithms"]["quantify"]
    assert set(res["missing"]) == {f"{r}{p}_t2_ms" for r in THICKNESS_REGIONS for p in ("", "_deep", "_superficial")}
    assert all(v == "not a two-echo qDESS series" for v in res["missing"].values())

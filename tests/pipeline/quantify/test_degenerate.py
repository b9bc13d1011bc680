"""Degenerate label maps give explicit nulls with reasons, never an exception."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.phantom import make_phantom
from pipeline.quantify import THICKNESS_REGIONS, Geometry, quantify
from pipeline.quantify.side import SideUnknown, knee_side


@pytest.fixture(scope="module")
def small():
    return make_phantom(21, "small", side="right", orientation="sagittal")


def _geom(ph) -> Geometry:
    return Geometry.of(ph.grid.spacing, ph.grid.origin, ph.grid.direction)


def test_no_patellar_cartilage(small) -> None:
    labels = small.labels.copy()
    labels[labels == 7] = 0
    res = quantify(labels, _geom(small)).results
    assert res["pat_cart_mm_mean"] is None and res["pat_cart_mm_std"] is None
    assert res["missing"]["pat_cart_mm"] == "no pat_cart in the label map"
    assert res["pat_cart_ml"] == 0.0
    assert res["med_tib_cart_mm_mean"] is not None and res["side"] == "right"
    json.dumps(res, allow_nan=False)  # serialisable, no NaN


def test_tiny_fragment(small) -> None:
    labels = small.labels.copy()
    keep = np.argwhere(labels == 6)[:3]
    labels[labels == 6] = 0
    labels[tuple(keep.T)] = 6
    res = quantify(labels, _geom(small)).results
    assert res["lat_tib_cart_mm_mean"] is None
    assert "fewer than 10" in res["missing"]["lat_tib_cart_mm"]
    assert res["lat_tib_cart_ml"] == pytest.approx(3 * np.prod(small.grid.spacing) / 1000, abs=1e-4)


def test_empty_label_map(small) -> None:
    res = quantify(np.zeros_like(small.labels), _geom(small)).results
    assert res["side"] is None and "no medial and lateral" in res["missing"]["side"]
    for region in THICKNESS_REGIONS:
        assert res[f"{region}_mm_mean"] is None
        assert res["missing"][f"{region}_mm"]
    assert all(res[k] == 0.0 for k in res if k.endswith("_ml"))
    json.dumps(res, allow_nan=False)


def test_no_tibial_cartilage_or_menisci_leaves_femoral_subregions_null(small) -> None:
    labels = small.labels.copy()
    labels[np.isin(labels, [5, 6, 8, 9])] = 0
    res = quantify(labels, _geom(small)).results
    assert res["side"] is None
    assert "subregions not available" in res["missing"]["med_wb_fem_cart_mm"]
    assert res["pat_cart_mm_mean"] is not None
    with pytest.raises(SideUnknown):
        knee_side(labels, small.grid.direction, small.grid.spacing, small.grid.origin)


def test_menisci_stand_in_for_tibial_cartilage_for_the_side(small) -> None:
    labels = small.labels.copy()
    labels[np.isin(labels, [5, 6])] = 0
    assert knee_side(labels, small.grid.direction, small.grid.spacing, small.grid.origin) == "right"


def test_non_canonical_label_values_are_refused(small) -> None:
    from kneenode.errors import ErrorCode, NodeError

    labels = small.labels.copy()
    labels[0, 0, 0] = 12
    with pytest.raises(NodeError) as err:
        quantify(labels, _geom(small))
    assert err.value.code == ErrorCode.INVALID_FORMAT


def test_random_label_maps_never_crash() -> None:
    """Noise, single voxels, one-slice maps, extreme spacing: nulls with reasons or numbers."""
    from scipy import ndimage

    from pipeline.phantom.pose import orientation_direction

    rng = np.random.default_rng(0)
    for case in range(12):
        shape = tuple(int(x) for x in rng.integers(3, 30, 3))
        if case % 3 == 0:
            labels = rng.integers(0, 10, shape).astype(np.uint8)
        elif case % 3 == 1:
            noise = ndimage.gaussian_filter(rng.standard_normal(shape), 2)
            labels = np.digitize(noise, np.linspace(-0.3, 0.3, 9)).astype(np.uint8)
        else:
            labels = np.zeros(shape, np.uint8)
            labels[:, :, shape[2] // 2] = rng.integers(0, 10, shape[:2])
        geom = Geometry.of(tuple(rng.uniform(0.2, 3.0, 3)), (0, 0, 0),
                           orientation_direction(("sagittal", "coronal", "oblique", "axial")[case % 4]).ravel())
        echoes = [rng.uniform(1, 2000, shape).astype(np.float32) for _ in range(2)]
        res = quantify(labels, geom, echoes=echoes, echo_times_ms=(6.4, 34.3),
                       acquisition={"flip_angle_deg": 20}).results
        json.dumps(res, allow_nan=False)
        for key, value in res.items():
            if value is None and key != "t2_protocol":
                prefix = key if key == "side" else key.rsplit("_", 1)[0]
                assert prefix in res["missing"], key

"""qDESS T2: the analytic formula against the phantom's own signal model, and region statistics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.phantom import ImagingParams, make_phantom
from pipeline.quantify import Geometry, QdessProtocol, protocol_from, quantify, t2_map
from pipeline.quantify.t2 import T2_REGIONS


def _acq(ph, tags: bool = True) -> dict:
    qp = ph.qdess_params
    return {"repetition_time_ms": qp.tr_ms, "flip_angle_deg": qp.flip_deg,
            "gl_area": qp.gl_area if tags else None, "tg_us": qp.tg_us if tags else None}


def _geom(ph) -> Geometry:
    return Geometry.of(ph.grid.spacing, ph.grid.origin, ph.grid.direction)


def test_formula_inverts_the_phantom_signal_model_exactly() -> None:
    ph = make_phantom(5, "small", side="left", qdess=True,
                      imaging=ImagingParams(noise_sigma=0, psf_sigma_vox=0, bias_strength=0.12))
    proto = protocol_from(_acq(ph), ph.echo_times_ms)
    assert proto.spoiling == "vendor gradient tags"
    t2 = t2_map(ph.echoes[0], ph.echoes[1], proto)
    cart = np.isin(ph.subregions, [5, 6, 7, 11, 12, 13, 14, 15])
    assert np.nanmax(np.abs(t2[cart] - ph.t2_map[cart])) < 0.05  # uint16-free float echoes
    # invalid voxels: fluid (250 ms) and no-signal air are NaN, never clipped to a number
    assert np.all(np.isnan(t2[ph.labels == 0][ph.t2_map[ph.labels == 0] >= 80]))


def test_low_spoiling_approximation_without_vendor_tags() -> None:
    proto = QdessProtocol(tr_ms=20.36, te_ms=6.428, flip_deg=20.0)
    assert proto.spoiling == "low-spoiling approximation"
    k, c1 = proto.constants()
    assert c1 == 0.0
    tagged = dataclasses.replace(proto, gl_area=3132.0, tg_us=1800.0)
    ratio = np.array([0.3], dtype=np.float32)
    e = np.exp(-20.36 / 1200.0)
    k0 = np.sin(np.radians(10)) ** 2 * (1 + e) / (1 - np.cos(np.radians(20)) * e)
    expected = -2 * (20.36 - 6.428) / np.log(0.3 / k0)
    assert k == pytest.approx(k0)
    assert t2_map(np.ones(1), ratio, proto)[0] == pytest.approx(expected, rel=1e-5)
    assert abs(t2_map(np.ones(1), ratio, tagged)[0] - expected) > 0.1  # the tags do change T2
    # TR is recovered from the two echo times when the header lacks it
    assert protocol_from({"flip_angle_deg": 20}, (6.428, 34.292)).tr_ms == pytest.approx(20.36)
    with pytest.raises(ValueError, match="FlipAngle"):
        protocol_from({}, (6.4, 34.3))


@pytest.mark.parametrize("side,orientation", [("left", "sagittal"), ("right", "coronal")])
def test_region_t2_within_2_ms_of_truth(side: str, orientation: str) -> None:
    ph = make_phantom(7, "small", side=side, orientation=orientation, qdess=True,
                      imaging=ImagingParams(psf_sigma_vox=0))  # noise and bias on, no blur
    res = quantify(ph.labels, _geom(ph), echoes=ph.echoes, echo_times_ms=ph.echo_times_ms,
                   acquisition=_acq(ph)).results
    truth = ph.truth["t2_ms"]
    assert res["t2_protocol"]["spoiling"] == "vendor gradient tags"
    worst = 0.0
    for region in T2_REGIONS:
        for part in ("", "_deep", "_superficial"):
            for stat in ("mean", "median"):
                key = f"{region}{part}_t2_ms_{stat}"
                assert res[key] is not None, key
                worst = max(worst, abs(res[key] - truth[key]))
                assert res[key] == pytest.approx(truth[key], abs=2.0), key
        # the depth gradient is seen: deep below superficial
        assert res[f"{region}_deep_t2_ms_mean"] < res[f"{region}_superficial_t2_ms_mean"]
    print(f"\nworst T2 error {worst:.2f} ms")
    assert not any(k.endswith("_t2_ms") for k in res["missing"])


def test_missing_flip_angle_gives_null_t2_with_reason() -> None:
    ph = make_phantom(7, "small", side="left", qdess=True)
    res = quantify(ph.labels, _geom(ph), echoes=ph.echoes, echo_times_ms=ph.echo_times_ms,
                   acquisition={"repetition_time_ms": 20.36}).results
    assert res["pat_cart_t2_ms_mean"] is None
    assert "FlipAngle" in res["missing"]["pat_cart_t2_ms"]
    assert res["pat_cart_mm_mean"] is not None

"""The antialiasing filter a model card can ask for before nnU-Net's downsampling."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.segment import folder as mf
from pipeline.segment import load_model
from pipeline.segment.antialias import (
    antialias,
    antialias_sigmas_mm,
    target_spacing_in_input_axes,
)
from pipeline.segment.predict import predict_native
from tests.pipeline.segment.conftest import SPACING, blob_volume, settings_for, write_tiny_model


def test_sigmas_make_up_half_the_resolution_difference_on_finer_axes_only():
    sig = antialias_sigmas_mm((0.7, 0.365, 0.365), (0.7, 0.7, 0.7))
    assert sig[0] == 0.0
    assert sig[1] == sig[2] == pytest.approx(0.5 * np.sqrt(0.7**2 - 0.365**2))
    assert antialias_sigmas_mm((0.9, 0.7, 0.7), (0.7, 0.7, 0.7)) == (0.0, 0.0, 0.0)


def test_an_image_on_the_model_grid_passes_through_unchanged():
    image = blob_volume()
    assert antialias(image, (0.7, 0.7, 0.7), (0.7, 0.7, 0.7)) is image


def test_detail_the_model_grid_cannot_hold_is_attenuated_and_coarse_signal_kept():
    """A stripe pattern above the 0.7 mm grid's Nyquist rate would alias when sampled at 0.7 mm."""
    x = np.arange(96) * 0.365
    fine = np.cos(2 * np.pi * x / 0.9)  # 0.9 mm period: finer than 1.4 mm (Nyquist at 0.7 mm)
    coarse = np.cos(2 * np.pi * x / 8.0)
    for pattern, lo, hi in ((fine, 0.0, 0.4), (coarse, 0.95, 1.0)):
        image = np.broadcast_to(pattern, (4, 8, 96)).astype(np.float32) + 10
        out = antialias(image, (0.7, 0.7, 0.365), (0.7, 0.7, 0.7))
        middle = slice(20, 76)
        gain = np.ptp(out[2, 4, middle]) / np.ptp(image[2, 4, middle])
        assert lo <= gain <= hi, gain
        assert out.mean() == pytest.approx(image.mean(), rel=1e-3)


def test_target_spacing_is_mapped_back_from_nnunets_transposed_axes():
    # transposed axis j holds input axis transpose_forward[j]
    assert target_spacing_in_input_axes((1.0, 2.0, 3.0), (2, 0, 1)) == (2.0, 3.0, 1.0)


def _logits(model, image, spacing) -> np.ndarray:
    seen = []
    predict_native(model, image, spacing, on_logits=lambda t: seen.append(t.cpu().numpy()))
    return seen[0]


def test_a_card_asking_for_antialiasing_filters_the_input_before_prediction(tmp_path):
    plain = write_tiny_model(tmp_path / "plain")
    asking = write_tiny_model(tmp_path / "asking")
    card = {"algorithm_name": "tiny", "algorithm_version": "1", "antialias": True}
    mf.write_json(asking / mf.MODEL_CARD, card)
    fine = [SPACING[0], SPACING[1] / 2, SPACING[2] / 2]  # twice finer in-plane
    image = blob_volume((20, 64, 64), seed=3)
    with_card = load_model(settings_for(asking))
    without = load_model(settings_for(plain))
    filtered = antialias(image, fine, SPACING)
    got = _logits(with_card, image, fine)
    np.testing.assert_allclose(got, _logits(without, filtered, fine), atol=1e-5)
    assert not np.allclose(got, _logits(without, image, fine), atol=1e-3)

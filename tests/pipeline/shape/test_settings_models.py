"""``[nsm]`` settings: when the stage is on, and what a bad model configuration reports."""

from __future__ import annotations

import pytest

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import NsmSettings
from pipeline.shape.stage import load_shape_models
from tests.pipeline.shape.conftest import DEMO, demo_settings


def test_enabled_follows_the_configured_models():
    assert not NsmSettings().active()
    assert NsmSettings(bone_cart_model=DEMO / "femur_bone_cart").active()
    assert not NsmSettings(type="both", bone_cart_model=DEMO / "femur_bone_cart").active()
    assert not NsmSettings(enabled=False, bone_cart_model=DEMO / "femur_bone_cart").active()
    assert NsmSettings(enabled=True).active()


def test_missing_or_mismatched_model_is_a_config_error(tmp_path):
    with pytest.raises(NodeError) as err:
        load_shape_models(NsmSettings(enabled=True, device="cpu"))
    assert err.value.code == ErrorCode.CONFIG_ERROR and "bone_cart_model" in str(err.value)
    with pytest.raises(NodeError, match="objects"):  # a bone-only model where two objects are needed
        load_shape_models(NsmSettings(bone_cart_model=DEMO / "femur_bone", device="cpu"))
    with pytest.raises(NodeError, match="does not exist"):
        load_shape_models(NsmSettings(bone_cart_model=tmp_path / "nope", device="cpu"))


def test_bscore_is_null_without_a_bscore_folder():
    models = load_shape_models(demo_settings(bone_cart_bscore=None))
    assert models.bscore["bone_and_cart"] is None
    assert models.nsm["bone_and_cart"].describe()["demo"] is True

"""Shared fixtures of the shape tests: the committed phantom demo models, one torch thread."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kneenode.settings import NsmSettings

ROOT = Path(__file__).resolve().parents[3]
DEMO = ROOT / "models" / "nsm_demo"


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small CPU fits are fastest (and steadiest on a shared 2-core runner) on one thread.

    Module scope so it is in force before the module-scoped fits are computed (OpenMP threads
    spinning against each other on a busy 2-core machine made them 10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def demo_settings(**kw) -> NsmSettings:
    """Settings for the demo bone+cartilage model, sized for CPU tests."""
    base = {"bone_cart_model": DEMO / "femur_bone_cart", "bone_cart_bscore": DEMO / "bscore_bone_cart",
                "bone_only_model": DEMO / "femur_bone", "bone_only_bscore": DEMO / "bscore_bone",
                "device": "cpu", "iterations": 200, "points": 3000, "mean_shape_resolution": 64,
                "recon_resolution": 96}
    base.update(kw)
    return NsmSettings(**base)

"""Tiny nnU-Net v2 model folders with random weights, written in nnU-Net's exact format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from kneenode.settings import SegmentSettings
from pipeline.segment import folder as mf
from pipeline.segment import unload_all
from pipeline.segment.labels import PUBLIC_MODEL_LABELS
from pipeline.segment.model import build_network

TINY = {"features": [4, 8, 16], "blocks": [1, 1, 1]}
SPACING = [1.4, 0.8, 0.8]
PATCH = [16, 32, 32]


def random_weights(plans: dict, dataset: dict, configuration: str, seed: int) -> dict:
    """State dict of the configuration's network, He-initialised from ``seed``."""
    torch.manual_seed(seed)
    pm = PlansManager(plans)
    net = build_network(pm, pm.get_configuration(configuration), dataset)
    net.apply(net.initialize)
    return net.state_dict()


def write_tiny_model(
    root: Path,
    *,
    folds=("0",),
    labels=None,
    configuration="3d_fullres",
    plans: dict | None = None,
    checkpoint="checkpoint_final.pth",
    seed: int = 0,
    name: str = "Dataset900_Tiny",
    plans_name="tinyPlans",
) -> Path:
    dataset = mf.dataset_json(name, labels or PUBLIC_MODEL_LABELS)
    plans = plans or mf.resenc_plans(
        dataset_name=name, plans_name=plans_name, patch_size=PATCH, spacing=SPACING, **TINY
    )
    folder = root / name / f"nnUNetTrainer__{plans_name}__{configuration}"
    weights = {
        f: random_weights(plans, dataset, configuration, seed + i) for i, f in enumerate(folds)
    }
    return mf.write_trained_model(
        folder,
        plans=plans,
        dataset=dataset,
        configuration=configuration,
        weights=weights,
        checkpoint_name=checkpoint,
    )


def cascade_plans(name: str = "Dataset901_TinyCascade", plans_name: str = "tinyPlans") -> dict:
    lowres = {
        "inherits_from": "3d_fullres",
        "spacing": [2.8, 1.6, 1.6],
        "patch_size": [16, 16, 16],
        "data_identifier": f"{plans_name}_3d_lowres",
        "next_stage": "3d_cascade_fullres",
    }
    cascade = {
        "inherits_from": "3d_fullres",
        "previous_stage": "3d_lowres",
        "data_identifier": f"{plans_name}_3d_cascade_fullres",
    }
    return mf.resenc_plans(
        dataset_name=name,
        plans_name=plans_name,
        patch_size=PATCH,
        spacing=SPACING,
        extra_configurations={"3d_lowres": lowres, "3d_cascade_fullres": cascade},
        **TINY,
    )


@pytest.fixture()
def tiny_model(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path)


@pytest.fixture()
def cascade_model(tmp_path: Path) -> Path:
    plans = cascade_plans()
    write_tiny_model(
        tmp_path, configuration="3d_lowres", plans=plans, name="Dataset901_TinyCascade", seed=10
    )
    return write_tiny_model(
        tmp_path,
        configuration="3d_cascade_fullres",
        plans=plans,
        name="Dataset901_TinyCascade",
        seed=20,
    )


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a shared 2-core runner more threads only spin-wait (6x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _fresh_cache():
    unload_all()
    yield
    unload_all()


def settings_for(model_dir: Path, **kw) -> SegmentSettings:
    return SegmentSettings(model_dir=model_dir, device="cpu", **kw)


def blob_volume(shape=(20, 40, 36), seed: int = 0) -> np.ndarray:
    """A smooth positive test volume (non-zero everywhere, so nnU-Net crops nothing)."""
    rng = np.random.default_rng(seed)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    vol = 100 + 50 * np.exp(-(zz**2 + yy**2 + xx**2) * 3) + rng.normal(0, 5, shape)
    return vol.astype(np.float32)

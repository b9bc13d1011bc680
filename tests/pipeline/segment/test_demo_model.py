"""The committed phantom demo model: format, identity, size, and Dice on unseen phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from kneenode.settings import DEMO_MODEL_DIR, QcSettings, SegmentSettings
from pipeline.qc import evaluate_qc
from pipeline.segment import CANONICAL, load_model, segment_image
from pipeline.segment.folder import sibling_dir
from pipeline.segment.labels import PUBLIC_MODEL_LABELS
from pipeline.segment.softmax import summarize_logits

MENISCI = (8, 9)
#: The demo model is an nnU-Net cascade: this 3d_lowres stage runs first, its labels feed
#: DEMO_MODEL_DIR (3d_cascade_fullres).
LOWRES_DIR = sibling_dir(DEMO_MODEL_DIR, "3d_lowres")
#: Seeds no stage trained on (training used 10000-240007, the cards' validation 90001-90022), both
#: presets, both sides, two slice orientations. Seed 1 full is ``kneenode demo --preset full``'s
#: knee (left, sagittal), whose compartments the round-1 lower stage named the wrong way round.
CASES = [(77001, "small", "left", "sagittal"), (77002, "small", "right", "coronal"),
         (77003, "small", "right", "sagittal"), (1, "full", None, "sagittal"),
         (77012, "full", "right", "coronal")]


def _phantom(seed: int, preset: str, side: str | None, orientation: str
             ) -> tuple[sitk.Image, np.ndarray]:
    """The phantom image as the series reader delivers it, and its canonical truth labels."""
    from pipeline.phantom import make_phantom

    ph = make_phantom(seed, preset, side=side, orientation=orientation)
    img = sitk.GetImageFromArray(ph.image.astype(np.float32))
    img.SetSpacing(ph.grid.spacing)
    img.SetOrigin(ph.grid.origin)
    img.SetDirection(ph.grid.direction)
    return img, ph.labels


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1))


@pytest.fixture(scope="module")
def demo():
    return load_model(SegmentSettings(device="cpu", cpu_threads=1))


def test_demo_model_is_a_phantom_demo_cascade_in_nnunet_format(demo):
    card = demo.card.as_dict()
    assert card["is_demo"] is True
    assert "PHANTOM DEMO" in card["algorithm_name"] and card["algorithm_version"]
    assert demo.dataset_json["labels"] == {"background": 0, **PUBLIC_MODEL_LABELS}
    assert demo.configuration == "3d_cascade_fullres"
    assert demo.previous is not None and demo.previous.configuration == "3d_lowres"
    for folder in (DEMO_MODEL_DIR, LOWRES_DIR):
        files = [p for p in folder.rglob("*") if p.is_file()]
        assert {p.name for p in files} >= {"dataset.json", "plans.json", "checkpoint_final.pth",
                                           "kneenode_model.json"}
        assert sum(p.stat().st_size for p in files) <= 10 * 1024 * 1024, folder


def test_demo_model_loads_in_stock_nnunet():
    """Both committed folders are ordinary nnU-Net v2 trained-model folders of one cascade."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    stages = {}
    for folder in (LOWRES_DIR, DEMO_MODEL_DIR):
        p = nnUNetPredictor(device=torch.device("cpu"), allow_tqdm=False, use_mirroring=False)
        p.initialize_from_trained_model_folder(str(folder), use_folds=("0",),
                                               checkpoint_name="checkpoint_final.pth")
        assert p.trainer_name == "nnUNetTrainer"
        stages[folder.name.rsplit("__", 1)[1]] = p.configuration_manager
    assert stages["3d_cascade_fullres"].previous_stage_name == "3d_lowres"
    assert stages["3d_cascade_fullres"].patch_size == load_model(
        SegmentSettings(device="cpu")).configuration_manager.patch_size


def test_demo_model_dice_on_unseen_phantoms_of_both_presets(demo):
    """Dice floors per structure; QC (with the model's own confidence, as the node runs it)
    passes each of these results too, so full knees pass QC in every orientation (the other
    three are in tests/pipeline/qc/test_qc.py)."""
    scores: dict[str, list[float]] = {name: [] for name in CANONICAL.values()}
    outcomes = []
    for seed, preset, side, orientation in CASES:
        image, truth = _phantom(seed, preset, side, orientation)
        confidence: dict = {}

        def keep(logits: torch.Tensor, out: dict = confidence) -> None:
            out.update(summarize_logits(logits, demo.lut))

        pred = sitk.GetArrayFromImage(segment_image(image, demo, on_logits=keep))
        for label, name in CANONICAL.items():
            scores[name].append(_dice(pred == label, truth == label))
        qc = evaluate_qc(pred, tuple(reversed(image.GetSpacing())), QcSettings(),
                         confidence=confidence)
        outcomes.append((seed, preset, orientation, qc.outcome, [r.message for r in qc.reasons]))
    table = "\n".join(f"{k:<26} " + " ".join(f"{v:.3f}" for v in vals) for k, vals in scores.items())
    print("\nDice per unseen phantom " + str(CASES) + "\n" + table + "\nQC: " + str(outcomes))
    assert all(o[3] == "pass" for o in outcomes), outcomes
    for label, name in CANONICAL.items():
        floor = 0.90 if label in MENISCI else 0.95  # issue 16: bones and cartilage >= 0.95
        assert min(scores[name]) >= floor, f"{name}: {scores[name]} < {floor}\n{table}"

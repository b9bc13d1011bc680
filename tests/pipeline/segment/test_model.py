"""Model folders in nnU-Net's format (random weights) load and predict through the real path."""

from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from kneenode.errors import ErrorCode, NodeError
from pipeline.segment import folder as mf
from pipeline.segment import load_model, segment_array, segment_image
from pipeline.segment.predict import predict_native, preprocess, sliding_window_logits

from .conftest import SPACING, blob_volume, settings_for, write_tiny_model


def stock_predictor(model, *, tta: bool = False) -> nnUNetPredictor:
    """nnU-Net's own predictor on the same network and weights (the reference)."""
    p = nnUNetPredictor(
        tile_step_size=0.5, use_mirroring=tta, device=torch.device("cpu"), allow_tqdm=False
    )
    p.manual_initialization(
        model.networks[0],
        model.plans_manager,
        model.configuration_manager,
        [n.state_dict() for n in model.networks],
        model.dataset_json,
        "nnUNetTrainer",
        model.mirror_axes,
    )
    return p


def _confident(logits: torch.Tensor, margin: float = 0.05) -> np.ndarray:
    top2 = torch.topk(logits.float(), 2, dim=0).values
    return (top2[0] - top2[1] > margin).numpy()


@pytest.mark.parametrize("tta", [False, True])
def test_logits_match_stock_nnunet(tiny_model, tta):
    model = load_model(settings_for(tiny_model, tta=tta, tile_batch_size=3))
    data, _ = preprocess(model, blob_volume(), SPACING)
    ours = sliding_window_logits(model, data)
    ref = stock_predictor(model, tta=tta).predict_logits_from_preprocessed_data(data).float()
    assert ours.shape == ref.shape
    # stock nnU-Net accumulates in fp16: compare away from the borders where its tiny Gaussian
    # weights lose precision (we accumulate in fp32)
    inner = (slice(None), slice(3, -3), slice(6, -6), slice(6, -6))
    assert torch.allclose(ours[inner], ref[inner], atol=0.02)


def test_native_labels_match_stock_nnunet(tiny_model):
    model = load_model(settings_for(tiny_model))
    vol = blob_volume()
    ours = predict_native(model, vol, SPACING)
    ref = stock_predictor(model).predict_single_npy_array(vol[None], {"spacing": list(SPACING)})
    data, _ = preprocess(model, vol, SPACING)
    sure = _confident(sliding_window_logits(model, data))
    assert ours.shape == vol.shape and ours.dtype == np.uint8
    assert (ours == ref)[sure].mean() > 0.995


def test_resampling_path_matches_stock(tiny_model):
    """Input spacing differs from the plans: nnU-Net resamples there and back."""
    model = load_model(settings_for(tiny_model))
    vol = blob_volume((14, 30, 30), seed=3)
    spacing = (2.0, 1.1, 1.0)
    ours = predict_native(model, vol, spacing)
    ref = stock_predictor(model).predict_single_npy_array(vol[None], {"spacing": list(spacing)})
    assert ours.shape == vol.shape
    assert (ours == ref).mean() > 0.97


def test_cascade_runs_lowres_first(cascade_model):
    model = load_model(
        settings_for(cascade_model.parent, configuration="3d_cascade_fullres", plans="tinyPlans")
    )
    assert model.previous is not None and model.previous.configuration == "3d_lowres"
    assert model.networks[0].encoder.stem.convs[0].conv.in_channels == 1 + 9
    vol = blob_volume()
    ours = predict_native(model, vol, SPACING)
    low = stock_predictor(model.previous).predict_single_npy_array(
        vol[None], {"spacing": list(SPACING)}
    )
    ref = stock_predictor(model).predict_single_npy_array(
        vol[None],
        {"spacing": list(SPACING)},
        segmentation_previous_stage=low[None].astype(np.int16),
    )
    assert ours.shape == vol.shape
    assert (ours == ref).mean() > 0.97


def test_folds_are_ensembled(tmp_path):
    folder = write_tiny_model(tmp_path, folds=("0", "1"))
    both = load_model(settings_for(folder))
    assert both.card.folds == ("0", "1") and len(both.networks) == 2
    one = load_model(settings_for(folder, folds=["1"]))
    assert one.card.folds == ("1",)
    data, _ = preprocess(both, blob_volume(), SPACING)
    mean = sliding_window_logits(both, data)
    ref = stock_predictor(both).predict_logits_from_preprocessed_data(data).float()
    inner = (slice(None), slice(3, -3), slice(6, -6), slice(6, -6))
    assert torch.allclose(mean[inner], ref[inner], atol=0.02)
    assert not torch.allclose(mean, sliding_window_logits(one, data), atol=0.02)


def test_checkpoint_best_and_dataset_folder(tmp_path):
    folder = write_tiny_model(tmp_path, checkpoint="checkpoint_best.pth")
    with pytest.raises(NodeError) as err:
        load_model(settings_for(folder))  # default checkpoint_final.pth is absent
    assert err.value.code == ErrorCode.CONFIG_ERROR
    model = load_model(
        settings_for(folder.parent, plans="tinyPlans", checkpoint="checkpoint_best.pth")
    )
    assert model.folder == folder and model.card.checkpoint == "checkpoint_best.pth"


def test_model_is_loaded_once_and_kept_warm(tiny_model):
    first = load_model(settings_for(tiny_model))
    assert load_model(settings_for(tiny_model)).networks is first.networks
    tta = load_model(settings_for(tiny_model, tta=True))  # predict-only setting: same weights
    assert tta.networks is first.networks and tta.settings.tta and not first.settings.tta
    other = load_model(settings_for(tiny_model, allow_pickle=True))
    assert other.networks is not first.networks  # what is loaded differs: loaded again


def test_segment_image_keeps_geometry_and_maps_labels(tiny_model):
    model = load_model(settings_for(tiny_model))
    image = sitk.GetImageFromArray(blob_volume())
    image.SetSpacing(tuple(reversed(SPACING)))
    image.SetOrigin((10.0, -5.0, 3.0))
    image.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))
    seen = []
    labels = segment_image(image, model, progress=lambda d, t: seen.append((d, t)))
    assert labels.GetSize() == image.GetSize()
    assert labels.GetOrigin() == image.GetOrigin() and labels.GetDirection() == image.GetDirection()
    native = predict_native(model, sitk.GetArrayFromImage(image), SPACING)
    raw = segment_array(
        sitk.GetArrayFromImage(image),
        SPACING,
        load_model(settings_for(tiny_model, postprocess=False)),
    )
    # native 7 (femur) -> canonical 1, native 1 (patellar cartilage) -> canonical 7
    assert np.array_equal(raw == 1, native == 7) and np.array_equal(raw == 7, native == 1)
    assert seen and seen[-1][0] == seen[-1][1]


def test_unmappable_labels_are_config_error(tmp_path):
    labels = {
        "femur": 1,
        "tibia": 2,
        "patella": 3,
        "femoral_cart": 4,
        "medial_tibial_cart": 5,
        "lateral_tibial_cart": 6,
        "patellar_cart": 7,
        "medial_meniscus": 8,
        "ACL": 9,
    }
    folder = write_tiny_model(tmp_path, labels=labels)
    with pytest.raises(NodeError) as err:
        load_model(settings_for(folder))
    assert err.value.code == ErrorCode.CONFIG_ERROR and "ACL" in err.value.message


def test_pickled_objects_refused_unless_allowed(tiny_model):
    path = tiny_model / "fold_0" / "checkpoint_final.pth"
    ck = torch.load(path, weights_only=False)
    ck["logging"] = {"args": argparse.Namespace(lr=0.01)}  # an arbitrary class instance
    torch.save(ck, path)
    with pytest.raises(NodeError) as err:
        load_model(settings_for(tiny_model))
    assert err.value.code == ErrorCode.CONFIG_ERROR and "allow_pickle" in err.value.message
    assert load_model(settings_for(tiny_model, allow_pickle=True)).networks


def test_numpy_scalars_in_training_log_load_weights_only(tiny_model):
    path = tiny_model / "fold_0" / "checkpoint_final.pth"
    ck = torch.load(path, weights_only=False)
    ck["_best_ema"] = np.float64(0.91)
    ck["logging"] = {"ema_fg_dice": [np.float64(0.5), np.float32(0.6)], "epoch": [np.int64(3)]}
    torch.save(ck, path)
    assert load_model(settings_for(tiny_model)).networks


def test_checkpoint_stores_aliased_weights_once(tiny_model):
    """Each convolution is registered twice in the network; the file holds its weight once."""
    path = tiny_model / "fold_0" / "checkpoint_final.pth"
    weights = torch.load(path, weights_only=True, map_location="cpu")["network_weights"]
    pairs = [(k, k.replace(".conv.weight", ".all_modules.0.weight")) for k in weights
             if k.endswith(".conv.weight")]
    assert pairs and all(b in weights for _, b in pairs)
    for a, b in pairs:
        assert weights[a].untyped_storage().data_ptr() == weights[b].untyped_storage().data_ptr()
    stored = {v.untyped_storage().data_ptr(): v.untyped_storage().nbytes() for v in weights.values()}
    assert path.stat().st_size < 1.2 * sum(stored.values()) + 64 * 1024
    load_model(settings_for(tiny_model))  # and it loads (strict) as before


def test_architecture_mismatch_is_config_error(tiny_model):
    plans = mf.read_json(tiny_model / "plans.json")
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"] = [
        4,
        8,
        32,
    ]
    mf.write_json(tiny_model / "plans.json", plans)
    with pytest.raises(NodeError) as err:
        load_model(settings_for(tiny_model))
    assert err.value.code == ErrorCode.CONFIG_ERROR and "architecture" in err.value.message


def test_missing_folder_and_bad_configuration(tmp_path, tiny_model):
    for kw in ({"model_dir": tmp_path / "nope"}, {"model_dir": tiny_model, "configuration": "2d"}):
        with pytest.raises(NodeError) as err:
            load_model(settings_for(**kw))
        assert err.value.code == ErrorCode.CONFIG_ERROR


def test_non_3d_input_is_invalid_format(tiny_model):
    model = load_model(settings_for(tiny_model))
    with pytest.raises(NodeError) as err:
        segment_array(np.zeros((10, 10), np.float32), (1.0, 1.0), model)
    assert err.value.code == ErrorCode.INVALID_FORMAT


def test_loader_never_imports_trainer_modules(tiny_model):
    """No trainer lookup: nnU-Net's recursive search would import primus_trainers (timm)."""
    code = (
        "import sys\n"
        "from kneenode.settings import SegmentSettings\n"
        "from pipeline.segment import load_model\n"
        f"load_model(SegmentSettings(model_dir={str(tiny_model)!r}, device='cpu'))\n"
        "print(sorted(m for m in sys.modules if m.startswith('nnunetv2.training.nnUNetTrainer')"
        " or m.startswith('timm') or m.endswith('primus')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("transpose", [[0, 1, 2], [2, 0, 1]])
def test_device_preprocessing_equals_nnunet(tmp_path, transpose):
    """The crop + z-score fast path gives nnU-Net's run_case_npy result exactly."""
    from pipeline.segment.predict import device_preprocess

    from .conftest import PATCH, TINY

    plans = mf.resenc_plans(dataset_name="Dataset900_Tiny", plans_name="tinyPlans",
                            patch_size=PATCH, spacing=[SPACING[i] for i in transpose], **TINY)
    plans["transpose_forward"] = transpose
    plans["transpose_backward"] = list(np.argsort(transpose).tolist())
    folder = write_tiny_model(tmp_path, plans=plans)
    model = load_model(settings_for(folder))
    vol = blob_volume()
    vol[:2] = 0  # zero margins: nnU-Net crops them and puts them back
    vol[:, -3:] = 0
    fast = device_preprocess(model, vol, SPACING)
    assert fast is not None
    ref_data, ref_props = preprocess(model, vol, SPACING)
    data, props = fast
    assert props["bbox_used_for_cropping"] == [list(map(int, b)) for b in
                                               ref_props["bbox_used_for_cropping"]]
    assert tuple(props["shape_before_cropping"]) == tuple(ref_props["shape_before_cropping"])
    assert torch.allclose(data.cpu(), ref_data, atol=1e-5)
    # the whole native prediction (fast path inside) equals stock nnU-Net
    ours = predict_native(model, vol, SPACING)
    ref = stock_predictor(model).predict_single_npy_array(vol[None], {"spacing": list(SPACING)})
    assert ours.shape == vol.shape
    assert (ours[:2] == 0).all() and (ours[:, -3:] == 0).all()
    assert (ours == ref).mean() > 0.97


def test_device_preprocessing_declines_when_resampling_needed(tiny_model):
    from pipeline.segment.predict import device_preprocess

    model = load_model(settings_for(tiny_model))
    assert device_preprocess(model, blob_volume(), (2.0, 1.1, 1.0)) is None

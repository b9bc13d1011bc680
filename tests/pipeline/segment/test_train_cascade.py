"""The demo cascade's training pieces: plans, the widened stem, a smoke run through inference."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from kneenode.settings import SegmentSettings
from pipeline.segment import folder as mf
from pipeline.segment import load_model, segment_image
from pipeline.segment import train_cascade as tc
from pipeline.segment import train_demo as td
from pipeline.segment.labels import PUBLIC_MODEL_LABELS
from pipeline.segment.model import build_network


def test_plans_hold_both_stages():
    pm = PlansManager(tc.make_plans())
    low, cascade = pm.get_configuration(tc.LOWRES), pm.get_configuration(tc.CASCADE)
    assert list(low.spacing) == list(tc.LOWRES_SPACING)
    assert list(low.patch_size) == list(tc.LOWRES_PATCH)
    assert low.network_arch_init_kwargs["n_stages"] == len(tc.LOWRES_FEATURES)
    assert cascade.previous_stage_name == tc.LOWRES
    assert list(cascade.patch_size) == list(td.PATCH)


def test_widened_stem_keeps_the_single_stage_output():
    """Zero weights on the one-hot channels: the cascade network starts as the demo network."""
    plans, dataset = tc.make_plans(), mf.dataset_json(td.DATASET, PUBLIC_MODEL_LABELS)
    pm = PlansManager(plans)
    torch.manual_seed(0)
    single = build_network(pm, pm.get_configuration("3d_fullres"), dataset)
    single.apply(single.initialize)
    cascade = build_network(pm, pm.get_configuration(tc.CASCADE), dataset)
    cascade.load_state_dict(tc.widen_stem(single.state_dict(), cascade.state_dict()))
    single.eval(), cascade.eval()
    x = torch.randn(1, 1, *td.PATCH)
    onehot = (torch.rand(1, 9, *td.PATCH) > 0.5).float()
    with torch.no_grad():
        a = single(x)
        b = cascade(torch.cat([x, onehot], 1))
        c = cascade(torch.cat([x, 1 - onehot], 1))
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)


def test_previous_stage_augmentation_changes_labels_never_the_image():
    """The one-hot channels are dilated/eroded or lose components; channel 0 (image) never moves."""
    torch.manual_seed(0)  # batchgeneratorsv2 draws from torch's and numpy's generators
    np.random.seed(0)
    augment = tc.previous_stage_augmentation(9)
    x = torch.zeros(10, 32, 32, 32)
    x[0] = torch.rand(32, 32, 32)
    x[1, 8:20, 8:20, 8:20] = 1  # a block: dilation or erosion changes it
    x[2, 24:27, 24:27, 24:27] = 1  # a small component: removal deletes it
    changed = 0
    for _ in range(60):
        y = augment(x.clone())
        assert y.shape == x.shape and torch.equal(y[0], x[0])
        assert set(torch.unique(y[1:]).tolist()) <= {0.0, 1.0}
        changed += int(not torch.equal(y[1:], x[1:]))
    assert 5 < changed < 60  # some patches augmented, some left as the lower stage gave them
    patches, _ = td.batch([td.Case(data=x.numpy(), seg=np.zeros((32,) * 3, np.int8), fg={})],
                          np.random.default_rng(0), 4, (32, 32, 32), augment=lambda p: p * 0)
    assert not patches.any()  # batch hands every patch to the augmentation


def test_smoke_training_gives_a_cascade_the_node_loads(tmp_path):
    """Two tiny stages trained for a few steps load as a cascade and label a phantom."""
    common = ["--out", str(tmp_path), "--cases", "2", "--no-large", "--iterations", "2"]
    tc.main(["--stage", "lowres", *common])
    tc.main(["--stage", "cascade", *common, "--no-eval"])
    folder = tc.stage_dir(tmp_path, tc.CASCADE)
    model = load_model(SegmentSettings(model_dir=folder, device="cpu"))  # auto: the folder name
    assert model.previous is not None and model.previous.configuration == tc.LOWRES
    # trained on antialiased input, so inference filters too; the lower stage was not
    assert model.card.extra["antialias"] is True and "antialias" not in model.previous.card.extra
    image, _ = td.phantom_images(90_001, "left", "sagittal", "small")
    labels = sitk.GetArrayFromImage(segment_image(image, model))
    assert labels.shape == sitk.GetArrayFromImage(image).shape
    assert set(np.unique(labels)) <= set(range(10))


def test_training_cases_can_see_the_antialiased_input_inference_sees():
    """preprocess_case(antialias=True) equals nnU-Net's preprocessing of the filtered image."""
    from pipeline.segment.antialias import antialias
    from tests.pipeline.segment.conftest import blob_volume

    pm = PlansManager(td.make_plans())
    dataset = mf.dataset_json(td.DATASET, PUBLIC_MODEL_LABELS)
    array = blob_volume((24, 48, 48), seed=5)
    spacing_xyz = (0.35, 0.35, 0.7)  # finer than the model's 0.7 mm in-plane

    def image_of(a):
        img = sitk.GetImageFromArray(a)
        img.SetSpacing(spacing_xyz)
        return img

    labels = sitk.GetImageFromArray(np.zeros(array.shape, np.uint8))
    labels.SetSpacing(spacing_xyz)
    filtered = antialias(array, tuple(reversed(spacing_xyz)), td.SPACING)
    on = td.preprocess_case(image_of(array), labels, pm, dataset, td.CONFIGURATION, "t",
                            antialias=True)
    ref = td.preprocess_case(image_of(filtered), labels, pm, dataset, td.CONFIGURATION, "t")
    off = td.preprocess_case(image_of(array), labels, pm, dataset, td.CONFIGURATION, "t")
    np.testing.assert_allclose(on.data, ref.data, atol=1e-5)
    assert not np.allclose(on.data, off.data, atol=1e-2)

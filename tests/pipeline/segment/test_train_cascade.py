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


def _slab_case(soft: bool) -> tuple[td.Case, np.ndarray]:
    """A 2.1 mm cartilage layer between bone and background at 0.35 mm, preprocessed to 0.7 mm.

    The layer's faces lie between the model's voxel centres, where a hard label map must round.
    """
    pm = PlansManager(td.make_plans())
    dataset = mf.dataset_json(td.DATASET, PUBLIC_MODEL_LABELS)
    shape = (24, 40, 40)  # z, y, x; z is already at 0.7 mm
    canonical = np.zeros(shape, np.uint8)
    canonical[:, :, :17] = 1  # femur
    canonical[:, :, 17:23] = 4  # femoral cartilage, 6 fine voxels
    spacing_xyz = (0.35, 0.35, 0.7)
    image_array = (1.0 + canonical).astype(np.float32)  # no zeros: nnU-Net crops nothing

    def image_of(a):
        img = sitk.GetImageFromArray(a)
        img.SetSpacing(spacing_xyz)
        return img

    case = td.preprocess_case(image_of(image_array), image_of(canonical), pm, dataset,
                              td.CONFIGURATION, "t", soft=soft)
    return case, td.canonical_to_native()[canonical]


def test_partial_volume_targets_keep_where_a_boundary_lies():
    """Shares resampled back to the fine grid give the layer back; the hard labels cannot."""
    soft, native = _slab_case(soft=True)
    hard, _ = _slab_case(soft=False)
    assert hard.target is None and np.array_equal(soft.seg, hard.seg)
    shares = soft.target.astype(np.float32)
    assert shares.shape == (10, *soft.seg.shape) and soft.target.dtype == np.float16
    np.testing.assert_allclose(shares.sum(0), 1, atol=2e-3)
    assert np.mean(shares.argmax(0) == soft.seg) > 0.99

    def back(channels: torch.Tensor) -> np.ndarray:
        up = torch.nn.functional.interpolate(channels[None], size=native.shape, mode="trilinear",
                                             align_corners=False)[0]
        return up.argmax(0).numpy()

    cartilage = td.canonical_to_native()[4]
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(hard.seg.astype(np.int64)), 10)
    from_shares = td.dice(back(torch.from_numpy(shares)) == cartilage, native == cartilage)
    from_labels = td.dice(back(one_hot.permute(3, 0, 1, 2).float()) == cartilage,
                          native == cartilage)
    assert from_shares > 0.99 and from_labels < 0.9


def test_shares_train_with_the_labels_loss_and_flip_with_the_image():
    """One-hot shares give nnU-Net's Dice + CE exactly; batches mirror shares with the image."""
    torch.manual_seed(0)
    logits = torch.randn(2, 10, 8, 8, 8)
    labels = torch.randint(0, 10, (2, 1, 8, 8, 8))
    shares = torch.nn.functional.one_hot(labels[:, 0], 10).permute(0, 4, 1, 2, 3).float()
    torch.testing.assert_close(td.dice_ce_loss(logits, shares), td.dice_ce_loss(logits, labels))

    # a case whose foreground share is the image itself: a patch mirrored differently from its
    # image, or cut elsewhere, would decorrelate them
    rng = np.random.default_rng(3)
    image = rng.uniform(0.05, 0.95, (1, 20, 24, 24)).astype(np.float32)
    target = np.concatenate([1 - image, image, np.zeros((8, 20, 24, 24), np.float32)])
    seg = target.argmax(0).astype(np.int8)
    case = td.Case(data=image, seg=seg, fg={1: np.argwhere(seg == 1).astype(np.int16)},
                   target=target.astype(np.float16))
    x, y = td.batch([case], rng, 16, patch=(24, 16, 16))  # z is padded: 20 slices < 24
    assert y.shape == (16, 10, 24, 16, 16) and y.dtype == torch.float32
    torch.testing.assert_close(y.sum(1), torch.ones(16, 24, 16, 16), atol=2e-3, rtol=0)
    for xi, yi in zip(x, y):
        inside = yi[0] < 1  # padding is all background, with no image under it
        assert inside.sum() == 20 * 16 * 16
        r = np.corrcoef(xi[0][inside].numpy(), yi[1][inside].numpy())[0, 1]
        assert r > 0.9


def test_lowres_stage_continues_from_its_weights_on_new_phantoms(tmp_path):
    """``--init`` on the lowres stage loads that stage's weights; ``--seed-offset`` new phantoms.

    With a learning rate of 0 the continued stage must hold exactly the weights it started from
    (a fresh He init under another seed would not), and its card must name the start and the shifted seeds.
    """
    common = ["--cases", "1", "--no-large", "--iterations", "1"]
    tc.main(["--stage", "lowres", "--out", str(tmp_path / "a"), *common])
    start = tc.stage_dir(tmp_path / "a", tc.LOWRES)
    tc.main(["--stage", "lowres", "--out", str(tmp_path / "b"), *common, "--init", str(start),
             "--seed-offset", "500", "--lr", "0", "--seed", "1"])
    continued = tc.stage_dir(tmp_path / "b", tc.LOWRES)
    weights = [mf.load_checkpoint(f / "fold_0" / "checkpoint_final.pth")[0]["network_weights"]
               for f in (start, continued)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    card = mf.read_json(continued / mf.MODEL_CARD)["training"]
    assert card["init"] == str(start)
    assert card["phantom_seeds"] == [td.TRAIN_SEED0 + 500]

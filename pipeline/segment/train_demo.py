"""Train the PHANTOM DEMO segmentation model and write it as an nnU-Net v2 trained-model folder.

Run: ``python -m pipeline.segment.train_demo [--out models/phantom_demo] [--iterations N]``.

Why a compact loop instead of ``nnUNetv2_train``: the stock trainer needs a raw + preprocessed
dataset on disk, background augmentation workers and 1000 epochs of 250 iterations; the demo model
has to train on 2 shared CPU cores in well under 30 minutes. The loop keeps everything that decides
the model's format and behaviour nnU-Net's own: the ``ResidualEncoderUNet`` class built from
plans.json by ``get_network_from_plans``, nnU-Net's preprocessing of every training case
(``DefaultPreprocessor.run_case_npy``: z-score normalisation, resampling to the plans' spacing), its
Dice + cross-entropy loss, and the checkpoint dict its trainer writes. What it drops: deep
supervision, spatial augmentation (only left-right mirroring and intensity jitter) and the 5-fold
split (one fold ``0``). The result loads unchanged in stock nnU-Net.

The training data are synthetic knee phantoms (:mod:`pipeline.phantom`: ``small`` and ``full``
presets and grids between them, :data:`GRIDS`; half of every batch from each size), both
sides, sagittal/coronal/axial/oblique slices, reoriented to the model's input orientation. The
dataset.json uses the label names of the public knee model (native numbering) so the name-based
remap runs for the demo too. The model card (``kneenode_model.json``) names it a phantom demo.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1
from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from kneenode.settings import DEMO_MODEL_DIR
from pipeline.segment import folder as mf
from pipeline.segment.antialias import antialias_for_configuration
from pipeline.segment.labels import CANONICAL, PUBLIC_MODEL_LABELS, native_to_canonical
from pipeline.segment.model import build_network
from pipeline.series.reorient import reorient

DATASET = "Dataset990_KneePhantomDemo"
PLANS = "nnUNetResEncUNetPhantomDemoPlans"
CONFIGURATION = "3d_fullres"
#: Orientation code (pipeline.series.reorient) the model's arrays are in (that of a sagittal phantom series): array axis 0
#: runs left-right, so mirroring axis 0 turns a left knee into a right one.
ORIENTATION = "PIR"
PATCH = (64, 48, 48)
FEATURES = (8, 16, 32, 64)
BLOCKS = (1, 1, 2, 2)
#: Isotropic at the small preset's in-plane spacing: every orientation is upsampled (never
#: downsampled) into the model's grid, so thin cartilage survives the round trip.
SPACING = (0.7, 0.7, 0.7)
ALGORITHM_NAME = "kneenode PHANTOM DEMO knee segmentation (NOT FOR CLINICAL USE)"  # <= 64 (LO)
ALGORITHM_VERSION = "phantom-demo-2.0"
#: Where a single-stage demo model is written: the cascade's dataset folder, as its 3d_fullres.
SINGLE_STAGE_DIR = mf.sibling_dir(DEMO_MODEL_DIR, "3d_fullres")
ORIENTATIONS = ("sagittal", "coronal", "axial", "oblique")
TRAIN_SEED0 = 10_000
#: Unseen validation phantoms (seed, side, orientation, grid): both presets and a size between.
VALIDATION = ((90_001, "left", "sagittal", "small"), (90_002, "right", "coronal", "small"),
              (90_011, "right", "sagittal", "full"), (90_012, "left", "coronal", "full"),
              (90_021, "left", "axial", "mid"), (90_022, "right", "oblique", "mid"))
#: Extra training grids: name -> (first seed, count). Most are rendered finer than the model's
#: 0.7 mm and resampled by nnU-Net's preprocessing, as a real series is: a model that mostly saw
#: ``full@model`` knees (rendered at 0.7 mm) reached Dice 0.99 on those and 0.92 on the same knees
#: through the resampling. This mix alone did not close that gap (docs/segmentation.md, round 3).
LARGE_CASES = {"full@model": (20_000, 4), "mid": (30_000, 8), "full": (40_000, 8)}


def training_specs(cases: int, large: bool, offset: int = 0) -> list[tuple[int, str]]:
    """(seed, grid) of the training phantoms: ``cases`` small ones, then :data:`LARGE_CASES`.

    ``offset`` shifts every seed (the cascade's second stage trains on phantoms the first never saw).
    """
    out = [(TRAIN_SEED0 + offset + i, "small") for i in range(cases)]
    if large:
        out += [(s0 + offset + i, grid) for grid, (s0, n) in LARGE_CASES.items() for i in range(n)]
    return out


@dataclass
class Case:
    """One preprocessed training phantom: normalised image and native labels at plans spacing."""

    data: np.ndarray  # float32 (c, z, y, x): the image, then (cascade) the lower stage's one-hot
    seg: np.ndarray  # int8 (z, y, x), native labels
    fg: dict[int, np.ndarray]  # native label -> voxel indices (N, 3)
    grid: str = "small"
    #: float16 (labels, z, y, x): each native label's share of every voxel, when trained on
    #: partial-volume targets (:func:`partial_volume_targets`); None: ``seg`` is the target.
    target: np.ndarray | None = None


#: Training grids besides the presets themselves (``make_phantom`` overrides). The ``full`` knee is
#: generated directly at the model's spacing (what the network sees after nnU-Net's resampling of a
#: full series, at an eighth of the generation cost); ``mid`` covers the knee sizes and spacings
#: between the presets.
GRIDS: dict[str, dict[str, Any]] = {
    "small": {"preset": "small"},
    "full": {"preset": "full"},
    "full@model": {"preset": "full", "spacing": (0.7, 0.7, 0.7), "shape": (200, 200, 160)},
    "mid": {"preset": "full", "scale": 0.75, "spacing": (0.5, 0.5, 0.8), "shape": (200, 200, 120)},
}


def phantom_images(seed: int, side: str, orientation: str,
                   grid: str = "small") -> tuple[sitk.Image, sitk.Image]:
    """A phantom on one of :data:`GRIDS` as (image, canonical labels), in the model's orientation."""
    from pipeline.phantom import make_phantom  # the generator is only needed for training/tests

    ph = make_phantom(seed, side=side, orientation=orientation, **GRIDS[grid])
    out = []
    for array in (ph.image.astype(np.float32), ph.labels.astype(np.uint8)):
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(ph.grid.spacing)
        img.SetOrigin(ph.grid.origin)
        img.SetDirection(ph.grid.direction)
        out.append(reorient(img, ORIENTATION)[0])
    return out[0], out[1]


def canonical_to_native() -> np.ndarray:
    """LUT canonical -> the public model's native numbering (derived from the names)."""
    lut = np.zeros(len(CANONICAL) + 1, dtype=np.uint8)
    for native, canonical in native_to_canonical(PUBLIC_MODEL_LABELS).items():
        lut[canonical] = native
    return lut


def make_plans() -> dict[str, Any]:
    """plans.json of the demo model (ResidualEncoderUNet, 4 stages, 8..64 features)."""
    return mf.resenc_plans(
        dataset_name=DATASET, plans_name=PLANS, patch_size=PATCH, spacing=SPACING,
        features=FEATURES, blocks=BLOCKS,
    )


def make_case(seed: int, side: str, orientation: str, pm: PlansManager,
              dataset: dict[str, Any], grid: str = "small",
              configuration: str = CONFIGURATION) -> Case:
    """Generate and preprocess one phantom exactly as inference will see it."""
    image, labels = phantom_images(seed, side, orientation, grid)
    return preprocess_case(image, labels, pm, dataset, configuration, grid)


def preprocess_case(image: sitk.Image, labels: sitk.Image, pm: PlansManager,
                    dataset: dict[str, Any], configuration: str, grid: str,
                    previous: np.ndarray | None = None, antialias: bool = False,
                    soft: bool = False) -> Case:
    """nnU-Net's preprocessing of (image, canonical labels) for ``configuration``.

    ``antialias`` filters the image first, as inference does for a model whose card asks for it
    (:mod:`pipeline.segment.antialias`). ``soft`` adds partial-volume targets
    (:func:`partial_volume_targets`).

    ``previous`` (native labels of the lower cascade stage, on the image's grid) goes through the
    same preprocessing call and is appended as one-hot channels, as inference does.
    """
    native = canonical_to_native()[sitk.GetArrayFromImage(labels)].astype(np.int16)
    segs = native[None] if previous is None else np.stack([native, previous.astype(np.int16)])
    spacing = list(reversed(image.GetSpacing()))
    cm = pm.get_configuration(configuration)
    array = sitk.GetArrayFromImage(image)
    if antialias:
        array = antialias_for_configuration(array, spacing, pm, cm)
    data, seg, props = DefaultPreprocessor(verbose=False).run_case_npy(
        array[None], segs, {"spacing": spacing}, pm, cm, dataset,
    )
    target = None
    if soft:
        n_labels = len(pm.get_label_manager(dataset).all_labels)
        target = partial_volume_targets(native, spacing, props["bbox_used_for_cropping"],
                                        data.shape[1:], n_labels, pm, cm)
    if previous is not None:
        foreground = pm.get_label_manager(dataset).foreground_labels
        data = np.vstack((data, convert_labelmap_to_one_hot(seg[1], foreground, data.dtype)))
    truth = np.where(seg[0] < 0, 0, seg[0]).astype(np.int8)
    fg = {int(v): np.argwhere(truth == v).astype(np.int16) for v in np.unique(truth) if v > 0}
    return Case(data=data.astype(np.float32), seg=truth, fg=fg, grid=grid, target=target)


def partial_volume_targets(native: np.ndarray, spacing: list[float], bbox: list[list[int]],
                           shape: tuple[int, ...], n_labels: int, pm: PlansManager,
                           cm: ConfigurationManager) -> np.ndarray:
    """Each label's share of every model voxel, float16 (labels, z, y, x), summing to one.

    Why: a hard label map on the model's 0.7 mm grid cannot say where inside a voxel a boundary
    lies. Exported to a 0.365 mm series it caps thin cartilage's Dice near 0.93 even when every
    voxel is right (docs/segmentation.md). Shares let the network learn the boundary's position.
    Each one-hot label (cropped as nnU-Net cropped the image) gets the image's antialiasing blur
    and the export's trilinear resampling, so the targets see the input's geometry.
    """
    if list(pm.transpose_forward) != list(range(native.ndim)):
        raise ValueError("partial-volume targets need plans without a transpose")
    crop = native[tuple(slice(int(lo), int(hi)) for lo, hi in bbox)]
    out = torch.empty((n_labels, *shape), dtype=torch.float32)
    for label in range(n_labels):
        share = antialias_for_configuration((crop == label).astype(np.float32), spacing, pm, cm)
        out[label] = torch.nn.functional.interpolate(
            torch.from_numpy(np.ascontiguousarray(share, dtype=np.float32))[None, None],
            size=tuple(shape), mode="trilinear", align_corners=False)[0, 0]
    out = out.clamp_(0, 1)
    out /= out.sum(0, keepdim=True).clamp_min(1e-6)
    return out.numpy().astype(np.float16)


def _crop(case: Case, rng: np.random.Generator, foreground: bool,
          patch_size: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    shape = np.array(case.seg.shape)
    patch = np.array(patch_size)
    if foreground and case.fg:
        label = rng.choice(list(case.fg))
        centre = case.fg[label][rng.integers(len(case.fg[label]))].astype(np.int64)
    else:
        centre = rng.integers(0, shape)
    start = np.clip(centre - patch // 2, 0, np.maximum(shape - patch, 0))
    sl = tuple(slice(s, s + p) for s, p in zip(start, patch))
    pad = [(0, int(p - s)) for p, s in zip(patch, case.seg[sl].shape)]
    x = np.pad(case.data[(slice(None), *sl)], [(0, 0), *pad])
    if case.target is None:
        return x, np.pad(case.seg[sl], pad)
    y = np.pad(case.target[(slice(None), *sl)].astype(np.float32), [(0, 0), *pad])
    y[0][y.sum(0) == 0] = 1  # the padding is background
    return x, y


Augment = Callable[[torch.Tensor], torch.Tensor]


def batch(cases: list[Case], rng: np.random.Generator, size: int,
          patch: tuple[int, ...] = PATCH, augment: Augment | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Patches (2/3 centred on a random foreground class), LR mirroring, intensity jitter.

    The targets are labels (b, 1, z, y, x), or shares (b, labels, z, y, x) for cases that have them.

    Jitter and noise touch the image channel only, never a cascade's one-hot channels; those get
    ``augment`` (one (c, z, y, x) patch in, one out), if given.
    """
    xs, ys = [], []
    small = [c for c in cases if c.grid == "small"]
    large = [c for c in cases if c.grid != "small"] or small
    for i in range(size):
        pool = small if (rng.random() < 0.5 and small) else large  # half the patches each
        x, y = _crop(pool[rng.integers(len(pool))], rng, rng.random() < 0.67, patch)
        if rng.random() < 0.5:
            x, y = x[:, ::-1], (y[::-1] if y.ndim == 3 else y[:, ::-1])
        x = np.array(x, dtype=np.float32)
        x[0] = x[0] * rng.uniform(0.85, 1.15) + rng.uniform(-0.15, 0.15)
        x[0] += rng.normal(0, rng.uniform(0, 0.08), x[0].shape).astype(np.float32)
        xs.append(x if augment is None else augment(torch.from_numpy(x)).numpy())
        ys.append(np.ascontiguousarray(y, dtype=np.int64 if y.ndim == 3 else np.float32))
    y_batch = np.stack(ys)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(
        y_batch[:, None] if y_batch.ndim == 4 else y_batch)


_DICE = {"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}
_HARD_LOSS = DC_and_CE_loss(_DICE, {}, weight_ce=1, weight_dice=1, ignore_label=None,
                            dice_class=MemoryEfficientSoftDiceLoss)
_SOFT_DICE = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, **_DICE)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """nnU-Net's Dice + cross-entropy, for labels (b, 1, ...) or shares (b, labels, ...).

    On shares it is the same sum: torch's cross-entropy takes class probabilities and the soft
    Dice takes a one-hot-shaped target as it is, so one-hot shares give the labels' loss.
    """
    if target.shape[1] == 1:
        return _HARD_LOSS(logits, target)
    return torch.nn.functional.cross_entropy(logits, target) + _SOFT_DICE(logits, target)


def train(cases: list[Case], network: torch.nn.Module, iterations: int, batch_size: int,
          seed: int, minutes: float, lr: float = 4e-3, log_every: int = 50,
          patch: tuple[int, ...] = PATCH, augment: Augment | None = None) -> list[float]:
    """AdamW with polynomial decay over whichever ends first, ``iterations`` or ``minutes``.

    The schedule follows the larger of the iteration and the time fraction, so a busy machine
    gets a complete (shorter) schedule instead of an overrun. Returns the loss history.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    losses: list[float] = []
    network.train()
    start = time.monotonic()
    for it in range(iterations):
        done = max(it / iterations, (time.monotonic() - start) / (60 * minutes))
        if done >= 1:
            break
        for group in opt.param_groups:
            group["lr"] = lr * (1 - done) ** 0.9
        x, y = batch(cases, rng, batch_size, patch, augment)
        opt.zero_grad(set_to_none=True)
        loss = dice_ce_loss(network(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
        opt.step()
        losses.append(float(loss.detach()))
        if (it + 1) % log_every == 0:
            recent = float(np.mean(losses[-log_every:]))
            print(f"iter {it + 1:5d}  loss {recent:+.4f}  lr-fraction-left {1 - done:.2f}  "
                  f"{time.monotonic() - start:6.0f} s", flush=True)
    network.eval()
    return losses


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1.0 when both are empty)."""
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def evaluate(model_dir: Path, cases: tuple[tuple[int, str, str, str], ...],
             configuration: str = CONFIGURATION) -> dict[str, dict[str, float]]:
    """Dice per structure of the written model on unseen phantoms, through the real inference path.

    ``cases`` are (seed, side, orientation, grid); the key records the inference seconds too.
    """
    from kneenode.settings import SegmentSettings
    from pipeline.segment import load_model, segment_image

    model = load_model(SegmentSettings(model_dir=model_dir, configuration=configuration,
                                       device="cpu"))
    out: dict[str, dict[str, float]] = {}
    for seed, side, orientation, grid in cases:
        image, truth = phantom_images(seed, side, orientation, grid)
        t0 = time.monotonic()
        pred = sitk.GetArrayFromImage(segment_image(image, model))
        seconds = time.monotonic() - t0
        ref = sitk.GetArrayFromImage(truth)
        scores = {CANONICAL[c]: round(dice(pred == c, ref == c), 4) for c in CANONICAL}
        out[f"{seed}-{grid}-{side}-{orientation}"] = {**scores, "seconds": round(seconds, 1)}
        print(seed, grid, side, orientation, f"{seconds:.0f} s",
              " ".join(f"{k.split()[0][:4]}:{v:.3f}" for k, v in scores.items()), flush=True)
    return out


def model_card(iterations: int, seconds: float, seeds: list[int], losses: list[float],
               validation: dict[str, dict[str, float]]) -> dict[str, Any]:
    """kneenode_model.json: identifies the model in every output as a phantom demo."""
    from pipeline.phantom.build import GENERATOR_VERSION

    return {
        "algorithm_name": ALGORITHM_NAME,
        "algorithm_version": ALGORITHM_VERSION,
        "description": "Tiny nnU-Net v2 ResidualEncoderUNet trained only on kneenode's synthetic "
        "knee phantoms (small and full presets and sizes between). It demonstrates the pipeline; it has never seen a real MRI "
        "and must not be used on patients.",
        "is_demo": True,
        "input_orientation": ORIENTATION,
        "training": {
            "script": "pipeline/segment/train_demo.py",
            "phantom_generator_version": GENERATOR_VERSION,
            "phantom_preset": "small+full",
            "phantom_seeds": seeds,
            "iterations": iterations,
            "seconds": round(seconds, 1),
            "final_loss": round(float(np.mean(losses[-50:])), 4),
            "device": "cpu",
            "torch": torch.__version__,
            "nnunetv2": importlib.metadata.version("nnunetv2"),
            "dynamic_network_architectures": importlib.metadata.version(
                "dynamic_network_architectures"),
        },
        "validation_dice": validation,
    }


def main(argv: list[str] | None = None) -> None:
    """Generate phantoms, train, write the folder, validate, write the model card."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=SINGLE_STAGE_DIR)
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--iterations", type=int, default=2500)
    ap.add_argument("--minutes", type=float, default=26.0, help="training time budget")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is fastest on a shared machine: no spin-waiting)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-large", dest="large", action="store_false",
                    help="train on the small preset only (the first demo model)")
    ap.add_argument("--lr", type=float, default=4e-3, help="peak learning rate")
    ap.add_argument("--init", type=Path, default=None,
                    help="continue from this trained-model folder (a warm start; the model card "
                    "keeps the earlier rounds)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    plans, dataset = make_plans(), mf.dataset_json(DATASET, PUBLIC_MODEL_LABELS)
    pm = PlansManager(plans)
    specs = training_specs(args.cases, args.large)
    seeds = [s for s, _ in specs]
    cases = []
    for i, (s, grid) in enumerate(specs):
        cases.append(make_case(s, ("left", "right")[i % 2], ORIENTATIONS[(i // 2) % 4], pm,
                               dataset, grid))
        print(f"case {i + 1}/{len(specs)} {grid} seed {s} {time.monotonic() - t0:.0f} s", flush=True)
    dataset["numTraining"] = len(cases)
    print(f"{len(cases)} phantoms preprocessed in {time.monotonic() - t0:.0f} s", flush=True)
    torch.manual_seed(args.seed)
    network = build_network(pm, pm.get_configuration(CONFIGURATION), dataset)
    network.apply(network.initialize)  # type: ignore[arg-type]  # nnU-Net's He init
    earlier: list[dict[str, Any]] = []
    if args.init is not None:
        checkpoint, _ = mf.load_checkpoint(args.init / "fold_0" / "checkpoint_final.pth")
        network.load_state_dict(checkpoint["network_weights"])
        old = mf.read_json(args.init / mf.MODEL_CARD).get("training", {})
        earlier = [*old.pop("earlier_rounds", []), old]
    losses = train(cases, network, args.iterations, args.batch_size, args.seed, args.minutes,
                   args.lr)
    seconds = time.monotonic() - t0
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    mf.write_trained_model(
        out, plans=plans, dataset=dataset, configuration=CONFIGURATION,
        weights={"0": network.state_dict()}, mirror_axes=(0,), epochs=len(losses),
        logging={"train_losses": [round(v, 5) for v in losses[::10]]},
    )
    card = model_card(len(losses), seconds, seeds, losses, {})
    card["training"]["grids"] = {g: sum(1 for _, x in specs if x == g) for _, g in specs}
    card["training"].update(lr=args.lr, batch_size=args.batch_size, earlier_rounds=earlier)
    mf.write_json(out / mf.MODEL_CARD, card)
    validation = evaluate(out, VALIDATION)
    card["validation_dice"] = validation
    mf.write_json(out / mf.MODEL_CARD, card)
    print(f"wrote {out} in {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()

"""Train the PHANTOM DEMO model as an nnU-Net v2 cascade (3d_lowres, then 3d_cascade_fullres).

Run: ``python -m pipeline.segment.train_cascade --stage lowres|cascade [--out DIR]``.

Why a cascade: on the ``full`` preset the knee is 2.6 times the ``small`` one. The single-stage
demo network (patch 64x48x48 at 0.7 mm, about 45 mm of context) then sees the inside of a bone as
a uniform grey it cannot tell from muscle (0.24 against 0.30 in the phantom's contrast). Of its
wrong voxels on an unseen full phantom, 54 % lie more than 3 mm from any label boundary: bone marrow
and whole menisci (medial against lateral) called background or the wrong side. nnU-Net's own
answer to images larger than the patch is the cascade: a ``3d_lowres`` stage at 1.4 mm whose patch
(64^3, 90 mm) holds the whole joint, and a ``3d_cascade_fullres`` stage that gets the lower
stage's labels as one-hot input channels and only has to refine. Inference already runs cascades
(``pipeline.segment.predict``); this module trains one with :mod:`pipeline.segment.train_demo`'s
loop, cases and augmentation.

The full-resolution stage starts from the single-stage demo weights (``--init``): its stem
convolution gets zero weights for the new one-hot channels, so training starts from today's
behaviour. Its training phantoms are new seeds the lower stage never saw, segmented by the trained
lower stage through the real inference path, so the one-hot input carries the errors it will
carry at inference.

Either stage can continue from a trained folder of its own kind (``--init``) on phantoms it never
saw (``--seed-offset``), e.g. a lower stage continued on the ``full`` and ``mid`` grids.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from kneenode.settings import DEMO_MODEL_DIR, SegmentSettings
from pipeline.segment import folder as mf
from pipeline.segment import train_demo as td
from pipeline.segment.labels import PUBLIC_MODEL_LABELS
from pipeline.segment.model import build_network

LOWRES = "3d_lowres"
CASCADE = "3d_cascade_fullres"
LOWRES_SPACING = (1.4, 1.4, 1.4)
LOWRES_PATCH = (64, 64, 64)
LOWRES_FEATURES = (8, 16, 32, 64, 96)
LOWRES_BLOCKS = (1, 1, 2, 2, 2)
#: Seeds of the full-resolution stage's phantoms: disjoint from the lower stage's.
CASCADE_SEED_OFFSET = 100_000
DEFAULT_OUT = DEMO_MODEL_DIR.parent


def make_plans() -> dict[str, Any]:
    """plans.json with the demo's ``3d_fullres`` and its two cascade stages."""
    low_arch = mf.resenc_plans(
        dataset_name=td.DATASET, plans_name=td.PLANS, patch_size=LOWRES_PATCH,
        spacing=LOWRES_SPACING, features=LOWRES_FEATURES, blocks=LOWRES_BLOCKS,
    )["configurations"]["3d_fullres"]["architecture"]
    lowres = {
        "inherits_from": "3d_fullres",
        "data_identifier": f"{td.PLANS}_{LOWRES}",
        "spacing": list(LOWRES_SPACING),
        "patch_size": list(LOWRES_PATCH),
        "median_image_size_in_voxels": list(LOWRES_PATCH),
        "architecture": low_arch,
        "next_stage": CASCADE,
    }
    cascade = {
        "inherits_from": "3d_fullres",
        "data_identifier": f"{td.PLANS}_{CASCADE}",
        "previous_stage": LOWRES,
    }
    return mf.resenc_plans(
        dataset_name=td.DATASET, plans_name=td.PLANS, patch_size=td.PATCH, spacing=td.SPACING,
        features=td.FEATURES, blocks=td.BLOCKS,
        extra_configurations={LOWRES: lowres, CASCADE: cascade},
    )


def stage_dir(out: Path, configuration: str) -> Path:
    """The trained-model folder of one stage inside the dataset folder ``out``."""
    return Path(out) / f"nnUNetTrainer__{td.PLANS}__{configuration}"


def lowres_cases(todo: list[tuple[int, str]], pm: PlansManager,
                 dataset: dict[str, Any]) -> list[td.Case]:
    """The phantoms preprocessed at the lower stage's spacing."""
    t0 = time.monotonic()
    out = []
    for i, (seed, grid) in enumerate(todo):
        out.append(td.make_case(seed, ("left", "right")[i % 2], td.ORIENTATIONS[(i // 2) % 4],
                                pm, dataset, grid, configuration=LOWRES))
        print(f"lowres case {i + 1}/{len(todo)} {grid} {time.monotonic() - t0:.0f} s", flush=True)
    return out


def cascade_cases(todo: list[tuple[int, str]], pm: PlansManager, dataset: dict[str, Any],
                  lowres_dir: Path) -> list[td.Case]:
    """The phantoms with the trained lower stage's labels as one-hot channels."""
    from pipeline.segment import load_model
    from pipeline.segment.predict import predict_native

    low = load_model(SegmentSettings(model_dir=lowres_dir, configuration=LOWRES, device="cpu"))
    t0 = time.monotonic()
    out = []
    for i, (seed, grid) in enumerate(todo):
        image, labels = td.phantom_images(seed, ("left", "right")[i % 2],
                                          td.ORIENTATIONS[(i // 2) % 4], grid)
        spacing = list(reversed(image.GetSpacing()))
        previous = predict_native(low, sitk.GetArrayFromImage(image), spacing)
        out.append(td.preprocess_case(image, labels, pm, dataset, CASCADE, grid, previous,
                                      antialias=True, soft=True))
        print(f"cascade case {i + 1}/{len(todo)} {grid} {time.monotonic() - t0:.0f} s", flush=True)
    return out


def previous_stage_augmentation(n_labels: int) -> td.Augment:
    """nnU-Net's cascade augmentation of the lower stage's one-hot channels (1..n_labels).

    Dilating, eroding, opening or closing labels and deleting whole components teaches the
    full-resolution stage to check the lower stage against the image. Without it the first round
    trusted an empty channel: the lower stage misses thin tibial cartilage on small knees (1.4 mm),
    and the cascade then gave Dice 0.29 where the single-stage model gave 0.99.
    """
    from batchgeneratorsv2.transforms.nnunet.random_binary_operator import (
        ApplyRandomBinaryOperatorTransform,
    )
    from batchgeneratorsv2.transforms.nnunet.remove_connected_components import (
        RemoveRandomConnectedComponentFromOneHotEncodingTransform,
    )
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    channels = list(range(1, n_labels + 1))
    compose = ComposeTransforms([
        RandomTransform(ApplyRandomBinaryOperatorTransform(
            channels, strel_size=(1, 8), p_per_label=0.5), apply_probability=0.4),
        RandomTransform(RemoveRandomConnectedComponentFromOneHotEncodingTransform(
            channels, fill_with_other_class_p=0, dont_do_if_covers_more_than_x_percent=0.15,
            p_per_label=0.5), apply_probability=0.3),
    ])
    return lambda patch: compose(image=patch)["image"]


def widen_stem(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
               ) -> dict[str, torch.Tensor]:
    """``state`` loaded into a network shaped like ``target``: zero weights on new input channels.

    Same shapes (continuing a stage) copy through; single-stage weights get the cascade's stem.
    """
    out = {}
    for key, value in target.items():
        old = state[key]
        if old.shape == value.shape:
            out[key] = old.clone()
        else:  # the first convolution: (out, 1, k, k, k) -> (out, 1 + n_labels, k, k, k)
            wide = torch.zeros_like(value)
            wide[:, : old.shape[1]] = old
            out[key] = wide
    return out


def main(argv: list[str] | None = None) -> None:
    """Train one stage and write its trained-model folder (plans hold both stages)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stage", choices=("lowres", "cascade"), required=True)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="dataset folder")
    ap.add_argument("--init", type=Path, default=None,
                    help="start from this folder's weights: for the cascade stage a single-stage "
                    "3d_fullres model of train_demo or a cascade stage to continue (default: the "
                    "demo model); for the lowres stage a lowres stage to continue (default: none)")
    ap.add_argument("--seed-offset", type=int, default=None,
                    help="shift the training phantoms' seeds (continue on phantoms the start "
                    f"weights never saw; default 0 for lowres, {CASCADE_SEED_OFFSET} for cascade)")
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--no-large", dest="large", action="store_false")
    ap.add_argument("--iterations", type=int, default=2500)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-eval", dest="evaluate", action="store_false",
                    help="skip the validation phantoms (smoke runs)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()
    plans, dataset = make_plans(), mf.dataset_json(td.DATASET, PUBLIC_MODEL_LABELS)
    pm = PlansManager(plans)
    configuration = LOWRES if args.stage == "lowres" else CASCADE
    torch.manual_seed(args.seed)
    network = build_network(pm, pm.get_configuration(configuration), dataset)
    network.apply(network.initialize)  # type: ignore[arg-type]  # nnU-Net's He init
    cascade = args.stage == "cascade"
    init = args.init or (DEMO_MODEL_DIR if cascade else None)
    offset = args.seed_offset if args.seed_offset is not None else CASCADE_SEED_OFFSET * cascade
    todo = td.training_specs(args.cases, args.large, offset)
    if not cascade:
        cases, patch, augment = lowres_cases(todo, pm, dataset), LOWRES_PATCH, None
    else:
        cases = cascade_cases(todo, pm, dataset, stage_dir(args.out, LOWRES))
        patch = td.PATCH
        augment = previous_stage_augmentation(len(pm.get_label_manager(dataset).foreground_labels))
    if init is not None:
        checkpoint, _ = mf.load_checkpoint(init / "fold_0" / "checkpoint_final.pth")
        network.load_state_dict(widen_stem(checkpoint["network_weights"], network.state_dict()))
    dataset["numTraining"] = len(cases)
    losses = td.train(cases, network, args.iterations, args.batch_size, args.seed, args.minutes,
                      args.lr, patch=patch, augment=augment)
    folder = stage_dir(args.out, configuration)
    mf.write_trained_model(
        folder, plans=plans, dataset=dataset, configuration=configuration,
        weights={"0": network.state_dict()}, mirror_axes=(0,), epochs=len(losses),
        logging={"train_losses": [round(v, 5) for v in losses[::10]]},
    )
    card = td.model_card(len(losses), time.monotonic() - t0, [s for s, _ in todo], losses, {})
    card["training"].update(script="pipeline/segment/train_cascade.py", stage=configuration,
                            lr=args.lr, batch_size=args.batch_size)
    if init is not None:
        card["training"]["init"] = str(init)
    if cascade:
        card["antialias"] = True  # trained on filtered input: inference must filter too
        card["training"]["targets"] = "partial-volume"
    mf.write_json(folder / mf.MODEL_CARD, card)
    if cascade and args.evaluate:
        card["validation_dice"] = evaluate(folder)
        mf.write_json(folder / mf.MODEL_CARD, card)
    print(f"wrote {folder} in {time.monotonic() - t0:.0f} s")


def evaluate(folder: Path) -> dict[str, dict[str, float]]:
    """Dice of the whole cascade on :data:`train_demo.VALIDATION` (the real inference path)."""
    return td.evaluate(folder, td.VALIDATION, configuration=CASCADE)


if __name__ == "__main__":
    main()

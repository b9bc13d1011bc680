"""In-memory nnU-Net v2 prediction: preprocessing, batched sliding window, export to a label map.

What is nnU-Net's own code: the preprocessor of the plans (``run_case_npy``: transpose, crop to
non-zero, normalisation, resampling), the sliding-window steps and Gaussian weights
(``compute_steps_for_sliding_window``, ``compute_gaussian``), padding (``pad_nd_image``), the
cascade's one-hot input (``convert_labelmap_to_one_hot``) and the export back to the input grid
(``convert_predicted_logits_to_segmentation_with_correct_shape``). What is ours: tiles are batched
(``segment.tile_batch_size``, TTA flips included), logits accumulate in
float32 on the device, fp16 autocast on CUDA, one network per fold kept on the device (no
``load_state_dict`` per case), and the when the preprocessing reduces to crop + z-score (no resampling) it runs on the device too
(:func:`device_preprocess`), as do the argmax and the crop reversal; the export's linear
resampling of the logits is torch's trilinear interpolation (:func:`linear_resample_logits`).
Nothing is written to disk.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from nnunetv2.inference.export_prediction import (
    convert_predicted_logits_to_segmentation_with_correct_shape,
)
from nnunetv2.inference.sliding_window_prediction import (
    compute_gaussian,
    compute_steps_for_sliding_window,
)
from nnunetv2.preprocessing.resampling.default_resampling import (
    compute_new_shape,
    determine_do_sep_z_and_axis,
)
from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot

from kneenode.errors import ErrorCode, NodeError
from pipeline.segment.antialias import antialias_for_configuration
from pipeline.segment.model import LoadedModel

#: progress(done, total) called after each batch of tiles.
Progress = Callable[[int, int], None]
#: on_logits(logits) sees the final stage's logits (classes, *spatial) on the model's grid, e.g.
#: to summarise the softmax (:mod:`pipeline.segment.softmax`) without keeping the maps.
LogitsTap = Callable[[torch.Tensor], None]


def tile_slices(shape: Sequence[int], patch: Sequence[int], step: float) -> list[tuple[slice, ...]]:
    """The spatial tiles nnU-Net visits for an (already padded) image of ``shape``."""
    steps = compute_steps_for_sliding_window(tuple(shape), tuple(patch), step)
    return [
        tuple(slice(s, s + p) for s, p in zip(start, patch)) for start in itertools.product(*steps)
    ]


def _batches(items: list[tuple[slice, ...]], size: int) -> Iterator[list[tuple[slice, ...]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _flip_sets(mirror_axes: tuple[int, ...] | None, enabled: bool) -> list[tuple[int, ...]]:
    """Axis combinations for mirroring TTA (spatial axes of a 5-D batch), identity first."""
    if not enabled or not mirror_axes:
        return [()]
    axes = [a + 2 for a in mirror_axes]
    return [()] + [c for n in range(1, len(axes) + 1) for c in itertools.combinations(axes, n)]


def _forward(
    network: torch.nn.Module, x: torch.Tensor, flips: list[tuple[int, ...]], max_batch: int
) -> torch.Tensor:
    """Network output averaged over the flips; tiles x flips run in batches of ``max_batch``."""
    if len(flips) == 1:
        return network(x).float()
    stacked = torch.cat([torch.flip(x, f) if f else x for f in flips])
    out = torch.cat([network(chunk).float() for chunk in stacked.split(max_batch)])
    n = x.shape[0]
    total = torch.zeros_like(out[:n])
    for i, f in enumerate(flips):
        part = out[i * n : (i + 1) * n]
        total += torch.flip(part, f) if f else part
    return total / len(flips)


@torch.inference_mode()
def sliding_window_logits(
    model: LoadedModel, data: torch.Tensor, progress: Progress | None = None
) -> torch.Tensor:
    """Logits (classes, *spatial) for preprocessed ``data`` (channels, *spatial), on the device.

    Tiles are weighted by nnU-Net's Gaussian and averaged over folds and TTA flips.
    """
    settings, device = model.settings, model.device
    patch = model.patch_size
    padded, revert = pad_nd_image(data, patch, "constant", {"value": 0}, True, None)
    padded = padded.to(device)
    tiles = tile_slices(padded.shape[1:], patch, settings.tile_step_size)
    gaussian = compute_gaussian(
        patch, sigma_scale=1.0 / 8, value_scaling_factor=10, dtype=torch.float32, device=device
    )
    n_classes = model.label_manager.num_segmentation_heads
    logits = torch.zeros((n_classes, *padded.shape[1:]), dtype=torch.float32, device=device)
    weights = torch.zeros(padded.shape[1:], dtype=torch.float32, device=device)
    flips = _flip_sets(model.mirror_axes, settings.tta)
    use_amp = device.type == "cuda" and settings.mixed_precision
    amp = torch.autocast("cuda", dtype=torch.float16) if use_amp else nullcontext()
    total = len(tiles) * len(model.networks)
    done = 0
    with amp:
        for network in model.networks:
            for batch in _batches(tiles, settings.tile_batch_size):
                x = torch.stack([padded[(slice(None), *s)] for s in batch])
                out = _forward(network, x, flips, settings.tile_batch_size)
                for k, s in enumerate(batch):
                    logits[(slice(None), *s)] += out[k] * gaussian
                    weights[s] += gaussian
                done += len(batch)
                if progress is not None:
                    progress(done, total)
    logits /= weights
    if not torch.isfinite(logits).all():
        raise NodeError(ErrorCode.SEGMENTATION_FAILED, "the network produced non-finite logits")
    return logits[(slice(None), *revert[1:])]


def preprocess(
    model: LoadedModel,
    image: np.ndarray,
    spacing: Sequence[float],
    previous_seg: np.ndarray | None = None,
) -> tuple[torch.Tensor, dict]:
    """nnU-Net's preprocessing of one single-channel volume (array axes as nnU-Net reads them)."""
    preprocessor = model.configuration_manager.preprocessor_class(verbose=False)
    seg = None if previous_seg is None else previous_seg[None].astype(np.int16)
    data, seg_out, props = preprocessor.run_case_npy(
        image[None].astype(np.float32, copy=False),
        seg,
        {"spacing": [float(s) for s in spacing]},
        model.plans_manager,
        model.configuration_manager,
        model.dataset_json,
    )
    if previous_seg is not None:
        onehot = convert_labelmap_to_one_hot(
            seg_out[0], model.label_manager.foreground_labels, data.dtype
        )
        data = np.vstack((data, onehot))
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), props


def device_preprocess(
    model: LoadedModel, image: np.ndarray, spacing: Sequence[float]
) -> tuple[torch.Tensor, dict] | None:
    """nnU-Net's preprocessing done on the model's device, when it reduces to crop + z-score.

    That is the case for a single channel, ``ZScoreNormalization`` without mask, and an input
    whose spacing gives the plans' shape (no resampling); the result equals ``run_case_npy``
    (the crop box of the non-zero mask does not depend on nnU-Net's hole filling). Returns None
    when the general CPU path is needed.
    """
    cm, pm = model.configuration_manager, model.plans_manager
    if list(cm.normalization_schemes) != ["ZScoreNormalization"] or any(cm.use_mask_for_norm):
        return None
    order = list(pm.transpose_forward)
    x = torch.from_numpy(np.array(image, dtype=np.float32)).to(model.device)
    x = x.permute(*order)
    nonzero = x != 0
    if not bool(nonzero.any()):
        return None
    bbox = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = torch.nonzero(nonzero.any(dim=others[1]).any(dim=others[0])).flatten()
        bbox.append([int(hit[0]), int(hit[-1]) + 1])
    crop = x[tuple(slice(a, b) for a, b in bbox)]
    shape = tuple(int(n) for n in crop.shape)
    transposed_spacing = [float(spacing[i]) for i in order]
    if tuple(int(n) for n in compute_new_shape(shape, transposed_spacing, cm.spacing)) != shape:
        return None
    std = torch.clamp(crop.std(correction=0), min=1e-8)
    data = ((crop - crop.mean()) / std)[None].contiguous()
    props = {
        "spacing": [float(v) for v in spacing],
        "shape_before_cropping": tuple(int(n) for n in x.shape),
        "bbox_used_for_cropping": bbox,
        "shape_after_cropping_and_before_resampling": shape,
        "on_device": True,
    }
    return data, props


def linear_resample_logits(model: LoadedModel, logits: torch.Tensor, props: dict
                           ) -> torch.Tensor | None:
    """The logits resampled to the cropped input shape with torch's trilinear interpolation.

    Equal to nnU-Net's export resampling (``resample_data_or_seg_to_shape``, order 1, no separate
    z axis: skimage's linear resize samples at pixel centres with edge clamping, as
    ``interpolate(align_corners=False)`` does) at a fraction of its CPU time (the full phantom
    preset: ~10 s instead of ~100 s). None when the plans ask for anything else.
    """
    cm, pm = model.configuration_manager, model.plans_manager
    conf = cm.configuration
    kwargs = conf.get("resampling_fn_probabilities_kwargs", {})
    if (conf.get("resampling_fn_probabilities") != "resample_data_or_seg_to_shape"
            or kwargs.get("order") != 1 or kwargs.get("is_seg") or logits.ndim != 4):
        return None
    target = [int(n) for n in props["shape_after_cropping_and_before_resampling"]]
    new_spacing = [float(props["spacing"][i]) for i in pm.transpose_forward]
    separate, _ = determine_do_sep_z_and_axis(kwargs.get("force_separate_z"), list(cm.spacing),
                                              new_spacing)
    if separate or len(target) != 3:
        return None
    out = torch.empty((logits.shape[0], *target), dtype=torch.float32, device=logits.device)
    for c in range(logits.shape[0]):  # one class at a time: the peak memory stays one volume
        out[c] = torch.nn.functional.interpolate(
            logits[c][None, None].float(), size=target, mode="trilinear", align_corners=False)[0, 0]
    return out


def logits_to_native(model: LoadedModel, logits: torch.Tensor, props: dict) -> np.ndarray:
    """Native label map on the input grid (undo resampling, cropping and transpose)."""
    if (tuple(logits.shape[1:]) != tuple(props["shape_after_cropping_and_before_resampling"])
            and not model.label_manager.has_regions):
        resampled = linear_resample_logits(model, logits, props)
        if resampled is not None:
            logits = resampled
    if tuple(logits.shape[1:]) == tuple(props["shape_after_cropping_and_before_resampling"]):
        # no resampling: argmax, crop reversal and transpose on the device (integer labels only:
        # region-based models are refused when the labels are mapped)
        seg = torch.argmax(logits, dim=0).to(torch.uint8)
        full = torch.zeros(props["shape_before_cropping"], dtype=torch.uint8, device=seg.device)
        full = insert_crop_into_image(full, seg, props["bbox_used_for_cropping"])
        full = full.permute(*model.plans_manager.transpose_backward)
        return np.ascontiguousarray(full.cpu().numpy())
    seg = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.to("cpu"),
        model.plans_manager,
        model.configuration_manager,
        model.label_manager,
        props,
        return_probabilities=False,
        num_threads_torch=max(1, torch.get_num_threads()),
    )
    return np.ascontiguousarray(np.asarray(seg), dtype=np.uint8)


def predict_native(
    model: LoadedModel,
    image: np.ndarray,
    spacing: Sequence[float],
    progress: Progress | None = None,
    on_logits: LogitsTap | None = None,
) -> np.ndarray:
    """Native labels for ``image`` (z, y, x as SimpleITK gives it; ``spacing`` in that order).

    A cascade runs its 3d_lowres stage first and feeds that label map to the full-resolution
    stage, as nnU-Net does.
    """
    if image.ndim != 3:
        raise NodeError(ErrorCode.INVALID_FORMAT, f"expected a 3-D volume, got shape {image.shape}")
    with cpu_threads(model):
        return _predict_native(model, image, spacing, progress, on_logits)


@contextmanager
def cpu_threads(model: LoadedModel) -> Iterator[None]:
    """Use ``segment.cpu_threads`` torch threads while predicting on the CPU, then restore."""
    wanted = model.settings.cpu_threads
    if model.device.type != "cpu" or wanted <= 0 or wanted == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _predict_native(
    model: LoadedModel,
    image: np.ndarray,
    spacing: Sequence[float],
    progress: Progress | None,
    on_logits: LogitsTap | None = None,
) -> np.ndarray:
    previous = None
    if model.previous is not None:
        previous = _predict_native(model.previous, image, spacing, progress)
    if model.card.extra.get("antialias"):
        image = antialias_for_configuration(image, spacing, model.plans_manager,
                                            model.configuration_manager)
    fast = device_preprocess(model, image, spacing) if previous is None else None
    data, props = fast if fast is not None else preprocess(model, image, spacing, previous)
    logits = sliding_window_logits(model, data, progress)
    if on_logits is not None:
        on_logits(logits)
    return logits_to_native(model, logits, props)

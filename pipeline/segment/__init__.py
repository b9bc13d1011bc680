"""The ``segment`` stage: an nnU-Net v2 model folder -> a canonical knee label map.

Typical use (a worker or a notebook)::

    from pipeline.segment import load_model, segment_image
    model = load_model(settings.segment)          # loaded once per process, kept warm
    labels = segment_image(image, model)          # SimpleITK image in, SimpleITK labels out

Labels are canonical (DESIGN.md: 1 femur ... 9 lateral meniscus) whatever the model's own
numbering; ``model.card.as_dict()`` identifies the model in every result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
import torch

from kneenode.errors import ErrorCode, NodeError
from pipeline.segment.labels import CANONICAL, native_to_canonical
from pipeline.segment.model import LoadedModel, ModelCard, load_model, unload_all
from pipeline.segment.postprocess import postprocess
from pipeline.segment.predict import LogitsTap, Progress, predict_native
from pipeline.series.reorient import plan_reorientation

__all__ = [
    "CANONICAL",
    "LoadedModel",
    "LogitsTap",
    "ModelCard",
    "Progress",
    "load_model",
    "native_to_canonical",
    "postprocess",
    "segment_array",
    "segment_image",
    "unload_all",
]


def segment_array(
    image: np.ndarray,
    spacing: Sequence[float],
    model: LoadedModel,
    *,
    progress: Progress | None = None,
    on_logits: LogitsTap | None = None,
) -> np.ndarray:
    """Canonical uint8 labels for a 3-D array (axes and ``spacing`` in SimpleITK's z, y, x order).

    Raises
    ------
    NodeError
        INVALID_FORMAT for a non-3-D input; SEGMENTATION_FAILED when the network fails
        (GPU_OOM when CUDA runs out of memory).
    """
    try:
        native = predict_native(model, np.asarray(image), spacing, progress, on_logits)
    except NodeError:
        raise
    except torch.cuda.OutOfMemoryError as exc:
        raise NodeError(ErrorCode.GPU_OOM, f"out of GPU memory while segmenting: {exc}") from None
    except (RuntimeError, ValueError) as exc:
        raise NodeError(
            ErrorCode.SEGMENTATION_FAILED, f"nnU-Net prediction failed: {exc}"
        ) from None
    labels = model.lut[np.clip(native, 0, len(model.lut) - 1)]
    return postprocess(labels) if model.settings.postprocess else labels


def segment_image(
    image: sitk.Image, model: LoadedModel, *, progress: Progress | None = None,
    on_logits: LogitsTap | None = None,
) -> sitk.Image:
    """Canonical labels as a SimpleITK image on exactly the input's grid (geometry copied).

    nnU-Net reads arrays in SimpleITK's axis order with reversed spacing and does not reorient.
    When the model card names an ``input_orientation`` (an orientation code such as ``PIR``, as
    :mod:`pipeline.series.reorient` spells it), the voxel grid is permuted/flipped into it before prediction and the labels back afterwards
    (exact, no resampling); otherwise the image must already be oriented as the model expects.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise NodeError(ErrorCode.INVALID_FORMAT, "segmentation needs a single-channel 3-D image")
    code = model.card.extra.get("input_orientation")
    plan = plan_reorientation(image, str(code)) if code else None
    work = plan.apply(image) if plan is not None and not plan.is_identity else image
    array = sitk.GetArrayViewFromImage(work)
    spacing = tuple(reversed(work.GetSpacing()))
    labels = sitk.GetImageFromArray(segment_array(array, spacing, model, progress=progress,
                                                  on_logits=on_logits))
    labels.CopyInformation(work)
    if plan is not None and work is not image:
        labels = plan.undo(labels)  # a permutation and flips of the voxel grid: exact
    labels.CopyInformation(image)
    return labels

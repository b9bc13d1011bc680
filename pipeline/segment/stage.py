"""The ``segment`` stage as a plain function: image in, label map + JSON record out.

The jobs layer (workers) and ``kneenode analyze`` both call :func:`segment_to_folder`; it knows
nothing about queues or job records. Outputs (atomic writes):

``labels.nii.gz``
    canonical labels on the input's grid (geometry copied from the input image);
``segmentation.json``
    the model identification (``model``: algorithm name/version, demo flag, folds, checkpoint
    hashes), label names, voxel counts, timings and ``confidence``, the softmax summary per
    structure (:mod:`pipeline.segment.softmax`; no probability map is written).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from kneenode.fsio import write_atomic
from kneenode.fsio import write_json_atomic as _write_json
from kneenode.settings import SegmentSettings
from pipeline.segment import load_model, segment_image
from pipeline.segment.labels import CANONICAL
from pipeline.segment.predict import Progress
from pipeline.segment.softmax import summarize_logits

LABELS_FILE = "labels.nii.gz"
RECORD_FILE = "segmentation.json"


def write_image_atomic(image: sitk.Image, path: Path) -> None:
    """Write an image durably (temp file in the same folder, fsync, rename); used by other stages."""
    suffix = "".join(Path(path).suffixes) or ".nii.gz"
    write_atomic(Path(path), lambda tmp: sitk.WriteImage(image, tmp, useCompression=True),
                 suffix=suffix)


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """Write JSON durably (argument order kept for the stages that import it from here)."""
    _write_json(Path(path), data)


def segment_to_folder(
    image: sitk.Image,
    out_dir: Path,
    settings: SegmentSettings,
    *,
    device: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Segment ``image`` with the configured model and write the stage outputs to ``out_dir``.

    Parameters
    ----------
    image
        The series volume (SimpleITK, single channel, 3-D).
    out_dir
        Folder for ``labels.nii.gz`` and ``segmentation.json``.
    settings
        ``settings.segment``; ``device`` (e.g. ``cuda:1`` from the GPU worker) overrides its device.

    Returns
    -------
    dict
        The record written to ``segmentation.json``.
    """
    if device is not None and device != settings.device:
        settings = settings.model_copy(update={"device": device})
    t0 = time.perf_counter()
    model = load_model(settings)
    t1 = time.perf_counter()
    confidence: dict[str, Any] = {}
    labels = segment_image(image, model, progress=progress,
                           on_logits=lambda logits: confidence.update(
                               summarize_logits(logits, model.lut)))
    t2 = time.perf_counter()
    counts = np.bincount(sitk.GetArrayViewFromImage(labels).ravel(), minlength=len(CANONICAL) + 1)
    record = {
        "model": model.card.as_dict(),
        "labels_file": LABELS_FILE,
        "labels": {str(k): v for k, v in CANONICAL.items()},
        "voxels": {CANONICAL[k]: int(counts[k]) for k in CANONICAL},
        "device": str(model.device),
        "tta": settings.tta,
        "seconds": {"load": round(t1 - t0, 3), "predict": round(t2 - t1, 3)},
        "confidence": confidence or None,
    }
    write_image_atomic(labels, Path(out_dir) / LABELS_FILE)
    _write_json(Path(out_dir) / RECORD_FILE, record)
    return record

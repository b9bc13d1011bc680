"""The ``segment`` stage as a plain function: image in, label map + JSON record out.

The jobs layer (workers) and ``kneenode analyze`` both call :func:`segment_to_folder`; it knows
nothing about queues or job records. Outputs (atomic writes):

``labels.nii.gz``
    canonical labels on the input's grid (geometry copied from the input image);
``segmentation.json``
    the model identification (``model``: algorithm name/version, demo flag, folds, checkpoint
    hashes), label names, voxel counts and timings.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from kneenode.settings import SegmentSettings
from pipeline.segment import load_model, segment_image
from pipeline.segment.labels import CANONICAL
from pipeline.segment.predict import Progress

LABELS_FILE = "labels.nii.gz"
RECORD_FILE = "segmentation.json"


def write_image_atomic(image: sitk.Image, path: Path) -> None:
    """Write an image through a temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".nii.gz"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix)
    os.fchmod(fd, 0o644)  # mkstemp makes 0600
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, useCompression=True)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(data: dict[str, Any], path: Path) -> None:
    """Write JSON through a temp file in the same folder, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    labels = segment_image(image, model, progress=progress)
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
    }
    write_image_atomic(labels, Path(out_dir) / LABELS_FILE)
    write_json_atomic(record, Path(out_dir) / RECORD_FILE)
    return record

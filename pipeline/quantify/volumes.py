"""Tissue volumes (mL) of the nine canonical labels: voxel count x voxel volume.

Counted inside each label's bounding box (``np.bincount`` of a whole 384x384x160 volume would
first widen every voxel to 64 bits). The research pipeline reported no volumes; the node adds them.
"""

from __future__ import annotations

import numpy as np

from pipeline.labels import TISSUE_KEYS as _TISSUE_KEYS
from pipeline.quantify.geometry import Boxes, Geometry, label_boxes

#: Canonical label -> result key prefix (the encoders' TISSUES and the phantom truth use the same).
TISSUE_KEYS: dict[int, str] = _TISSUE_KEYS


def tissue_volumes(labels: np.ndarray, geom: Geometry, boxes: Boxes | None = None) -> dict[str, float]:
    """``<tissue>_ml`` for labels 1-9 (0.0 for an absent tissue) of a canonical label map.

    ``boxes`` (from :func:`label_boxes` of ``labels``) saves one pass over the volume.
    """
    boxes = boxes if boxes is not None else label_boxes(labels, 9)
    ml = geom.voxel_mm3 / 1000.0
    out: dict[str, float] = {}
    for value, key in TISSUE_KEYS.items():
        box = boxes[value - 1] if value - 1 < len(boxes) else None
        count = int(np.count_nonzero(labels[box] == value)) if box is not None else 0
        out[f"{key}_ml"] = round(count * ml, 4)
    return out

"""Post-processing of a canonical label map: what the old pipeline did after nnU-Net.

Keep only the largest connected component of each structure (stray islands would bias volumes and
thickness) and fill holes in the three bones (marrow with odd contrast is bone, and the bone
meshes must be closed). Filled voxels are only taken from background, never from another
structure, so cartilage that a bone would enclose is kept.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from scipy import ndimage

from pipeline.segment.labels import BONES, CANONICAL

_FULL = ndimage.generate_binary_structure(
    3, 3
)  # 26-connectivity, as nnU-Net's remove_all_but_largest_component


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of a boolean mask (empty stays empty)."""
    if not mask.any():
        return mask
    labelled, n = ndimage.label(mask, structure=_FULL)
    if n <= 1:
        return mask
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == int(np.argmax(sizes))


def postprocess(
    labels: np.ndarray,
    *,
    structures: Iterable[int] = tuple(CANONICAL),
    fill_holes_in: Iterable[int] = BONES,
) -> np.ndarray:
    """Largest component per structure, then bone hole filling; returns a new uint8 array."""
    out = np.asarray(labels, dtype=np.uint8).copy()
    for label in structures:
        mask = out == label
        if not mask.any():
            continue
        objects = ndimage.find_objects(mask.astype(np.uint8))[0]
        sub = mask[objects]
        keep = largest_component(sub)
        region = out[objects]
        region[sub & ~keep] = 0
    for label in fill_holes_in:
        mask = out == label
        if not mask.any():
            continue
        objects = ndimage.find_objects(mask.astype(np.uint8))[0]
        region = out[objects]
        filled = ndimage.binary_fill_holes(region == label)
        region[filled & (region == 0)] = label
    return out

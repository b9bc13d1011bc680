"""Post-processing of a canonical label map: what the old pipeline did after nnU-Net.

Per structure, keep the largest connected component and drop smaller islands (stray islands bias
volumes and thickness), then fill holes in the three bones (marrow with odd contrast is bone, and
the bone meshes must be closed). Filled voxels are only taken from background, never from another
structure, so cartilage that a bone would enclose is kept.

One deliberate difference from a strict "largest component only": a component at least
``keep_fraction`` (default 0.2) of the largest one's size is kept too. A thin structure can be two
pieces at the scan's resolution (the lateral meniscus ring of the small phantoms is, in the truth
itself); dropping a genuine half is far worse than keeping it, while false-positive islands are
small.

A second one: the medial and lateral halves of a paired structure (tibial cartilage, menisci) are
told apart by where they lie, and a network can give part of one half the other's name (measured:
the demo cascade called a horn of a full phantom's lateral meniscus, 3 550 voxels, medial). Such an
island touches the main component of its partner and not its own, so it becomes the partner's
instead of background: a piece attached to the lateral meniscus is lateral meniscus.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from scipy import ndimage

from pipeline.segment.labels import BONES, CANONICAL

#: Canonical label -> its other half (medial <-> lateral tibial cartilage and meniscus).
PARTNERS: dict[int, int] = {5: 6, 6: 5, 8: 9, 9: 8}

_FULL = ndimage.generate_binary_structure(
    3, 3
)  # 26-connectivity, as nnU-Net's remove_all_but_largest_component


def main_components(mask: np.ndarray, keep_fraction: float = 0.2) -> np.ndarray:
    """The largest 26-connected component of a boolean mask and those >= keep_fraction of it."""
    if not mask.any():
        return mask
    labelled, n = ndimage.label(mask, structure=_FULL)
    if n <= 1:
        return mask
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    keep = sizes >= keep_fraction * sizes.max() if keep_fraction > 0 else np.zeros(n + 1, bool)
    keep[int(np.argmax(sizes))] = True  # the largest always (ties: the first)
    keep[0] = False
    return keep[labelled]


def postprocess(
    labels: np.ndarray,
    *,
    structures: Iterable[int] = tuple(CANONICAL),
    fill_holes_in: Iterable[int] = BONES,
    keep_fraction: float = 0.2,
    partners: Mapping[int, int] = PARTNERS,
) -> np.ndarray:
    """Main components per structure, then bone hole filling; returns a new uint8 array.

    ``keep_fraction = 0`` keeps strictly the largest component. An island of a structure in
    ``partners`` that touches its partner's main component joins the partner; other islands become
    background.
    """
    out = np.asarray(labels, dtype=np.uint8).copy()
    for label in structures:
        partner = partners.get(label)
        region = _label_box(out, label, partner)
        if region is None:
            continue
        sub = region == label
        islands = sub & ~main_components(sub, keep_fraction)
        if partner is not None and islands.any() and (region == partner).any():
            numbered, _ = ndimage.label(islands, structure=_FULL)
            near = ndimage.binary_dilation(main_components(region == partner, keep_fraction),
                                           structure=_FULL)
            joining = np.isin(numbered, np.unique(numbered[near & islands]))
            region[islands & joining] = partner
            islands &= ~joining
        region[islands] = 0
    for label in fill_holes_in:
        region = _label_box(out, label)
        if region is not None:
            filled = ndimage.binary_fill_holes(region == label)
            region[filled & (region == 0)] = label
    return out


def _label_box(labels: np.ndarray, label: int, partner: int | None = None) -> np.ndarray | None:
    """A writable view of ``labels`` cropped to ``label``'s bounding box (None when absent).

    With a ``partner`` the box holds both labels, one voxel wider (where they may touch).
    """
    mask = labels == label
    if not mask.any():
        return None
    if partner is None:
        return labels[ndimage.find_objects(mask.astype(np.uint8))[0]]
    box = ndimage.find_objects((mask | (labels == partner)).astype(np.uint8))[0]
    return labels[tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)]

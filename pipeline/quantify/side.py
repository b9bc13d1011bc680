"""Knee side from the label map (the research pipeline's rule).

Rule: compare the patient-x (LPS, +x = patient's left) coordinate of the medial and the lateral
tibial cartilage centroids. On a right knee the medial compartment lies towards the patient's
left, so ``x(medial) > x(lateral)`` means a RIGHT knee, otherwise LEFT. When the label map has no
tibial cartilage the menisci (8 medial, 9 lateral) stand in for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.quantify.geometry import Boxes, Geometry, medial_lateral_centroids


class SideUnknown(ValueError):
    """Neither both tibial cartilage plates nor both menisci are present."""


def knee_side(
    labels: np.ndarray,
    direction: Sequence[float],
    spacing: Sequence[float],
    origin: Sequence[float],
) -> str:
    """``"left"`` or ``"right"`` for a canonical label map (``[k, j, i]``, SimpleITK geometry).

    Parameters
    ----------
    labels
        Canonical labels (5 medial / 6 lateral tibial cartilage; 8 / 9 menisci as fallback).
    direction, spacing, origin
        SimpleITK geometry of the label map (direction row-major, 9 values; spacing/origin i, j, k).

    Raises
    ------
    SideUnknown
        When medial and lateral structures are not both present.
    """
    return side_of(np.asarray(labels), Geometry.of(spacing, origin, direction))


def side_of(labels: np.ndarray, geom: Geometry, boxes: Boxes | None = None) -> str:
    """:func:`knee_side` for a :class:`Geometry` (and precomputed label boxes)."""
    pair = medial_lateral_centroids(labels, geom, boxes)
    if pair is None:
        raise SideUnknown("no medial and lateral tibial cartilage (or menisci) to tell the side")
    med, lat, _ = pair
    return "right" if med[0] > lat[0] else "left"

"""A 2-D map of femoral cartilage thickness for reports (the PDF draws it with ``imshow``).

The femoral cartilage wraps around the condyles, so the map "unrolls" it: columns are positions
along the knee's medial-lateral axis (1 mm bins, lateral on the left, medial on the right), rows
the angle around that axis through the femoral cartilage centroid, from posterior (-90 degrees,
top) through inferior (0, the weight-bearing zone) to anterior (+90) and beyond (2-degree bins).
Each bin holds the area-weighted mean thickness of the bone vertices that fall in it; empty bins
are NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.quantify.geometry import FEM_SUBREGIONS, Geometry, KneeFrame
from pipeline.quantify.thickness import BoneThickness

ML_BIN_MM = 1.0
ANGLE_BIN_DEG = 2.0


@dataclass(frozen=True)
class ThicknessMap:
    """``values[row, col]`` in mm; row edges in degrees, column edges in mm (medial positive)."""

    values: np.ndarray
    angle_edges_deg: np.ndarray
    ml_edges_mm: np.ndarray


def femoral_thickness_map(
    femur: BoneThickness | None, geom: Geometry, frame: KneeFrame | None, centre_lps: Sequence[float] | None
) -> ThicknessMap | None:
    """The unrolled map, or None without femoral thickness or an anatomical frame."""
    if femur is None or frame is None or centre_lps is None:
        return None
    sel = np.isin(femur.region, FEM_SUBREGIONS) & (femur.thickness > 0)
    if sel.sum() < 10:
        return None
    p = geom.mm_to_lps(femur.vertices[sel]) - np.asarray(centre_lps)
    u, a, s = p @ frame.ml, p @ frame.ap, p @ frame.si
    ang = np.degrees(np.arctan2(a, -s))
    ml_edges = np.arange(np.floor(u.min()), np.ceil(u.max()) + ML_BIN_MM, ML_BIN_MM)
    an_edges = np.arange(np.floor(ang.min() / 2) * 2, np.ceil(ang.max() / 2) * 2 + ANGLE_BIN_DEG, ANGLE_BIN_DEG)
    col = np.clip(np.digitize(u, ml_edges) - 1, 0, len(ml_edges) - 2)
    row = np.clip(np.digitize(ang, an_edges) - 1, 0, len(an_edges) - 2)
    shape = (len(an_edges) - 1, len(ml_edges) - 1)
    flat = row * shape[1] + col
    w = femur.areas[sel]
    num = np.bincount(flat, weights=w * femur.thickness[sel], minlength=shape[0] * shape[1])
    den = np.bincount(flat, weights=w, minlength=shape[0] * shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(den > 0, num / den, np.nan).reshape(shape)
    return ThicknessMap(values.astype(np.float32), an_edges, ml_edges)

"""Femoral cartilage subregions 11-15 (anterior, medial / lateral weight-bearing, medial / lateral
posterior), following the research pipeline's rule in the knee's own anatomical frame.

The exact rule (all coordinates in mm along the unit vectors of :func:`knee_frame`: ``u`` towards
medial, ``a`` towards anterior, ``s`` towards superior, taken at the centres of the femoral
cartilage voxels, label 4):

1. Project the femoral cartilage onto the (u, a) plane and cut it into ML strips of width
   ``w`` = the largest voxel spacing. For each strip take its posterior-most point ``amin(u)``.
2. Trochlear notch. First guess: the strip whose mean ``a`` is the most anterior (ignoring 4 mm at
   each ML end); second guess: the ML centroid of all femoral cartilage. Search the strips from
   8 mm below the smaller to 8 mm beyond the larger guess for the largest ``amin(u)`` (the strip
   whose most posterior cartilage lies furthest anterior: the roof of the intercondylar notch).
   The notch is the run of adjacent strips around that one whose ``amin`` lies above the
   midpoint of the window's range; ``u_notch`` is the centre of the run and ``a_notch`` the
   largest ``amin`` of its central half. (The research code takes the single strip with the
   largest value; where the notch roof is flat, its ends meet the condyles and sit further
   anterior, so the central half is the stable choice.)
3. Anterior / weight-bearing boundary: ``a_ant = a_notch - h/2`` (``h``: voxel extent along
   ``a``), i.e. the posterior edge of the notch voxel, as the research code's ``notch + 1`` index.
4. Weight-bearing / posterior boundary: ``a_post = a_ant + 0.6 (a_min - a_ant)``, ``a_min`` the
   posterior-most femoral cartilage voxel centre (distance fraction 0.6 of the reference).
5. Superior cut (so cartilage wrapping over the top of a posterior condyle is never
   weight-bearing): for each strip along ``a`` (width ``w``),
   ``s_cut(a) = 0.67 mean_s(a) + 0.33 s_top``, ``s_top`` the most superior femoral cartilage point.
6. A voxel is anterior (11) if ``a > a_ant``; else weight-bearing if ``a > a_post`` and
   ``s <= s_cut(a)``; else posterior. It is medial (12 / 14) when it lies on the same side of the
   plane ``u = u_notch`` as the medial tibial cartilage centroid (menisci if no tibial cartilage),
   else lateral (13 / 15).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.quantify.geometry import (
    ANT_FEM,
    FEM_CART,
    LAT_POST_FEM,
    LAT_WB_FEM,
    MED_POST_FEM,
    MED_WB_FEM,
    Boxes,
    Geometry,
    KneeFrame,
    knee_frame,
    label_boxes,
    label_voxels,
    medial_lateral_centroids,
)

WB_FRACTION = 0.6
SUPERIOR_RATIO = 0.33
EDGE_IGNORE_MM = 4.0
SEARCH_MARGIN_MM = 8.0


@dataclass(frozen=True)
class Subregions:
    """Label map with femoral cartilage replaced by 11-15 (``None`` reason when not split)."""

    labels: np.ndarray
    reason: str | None = None
    boundaries: dict[str, Any] = field(default_factory=dict)
    boxes: list = field(default_factory=list)  # label_boxes of ``labels`` (1..15)


def _strip_stats(u: np.ndarray, w: float, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per strip of width ``w`` along ``u``: centres, min and mean of ``values``, point counts."""
    b = np.floor((u - u.min()) / w).astype(np.int64)
    n = int(b.max()) + 1
    idx = np.arange(n)
    counts = np.bincount(b, minlength=n)
    mins = np.asarray(ndimage.minimum(values, b, idx), dtype=np.float64)
    means = np.bincount(b, weights=values, minlength=n) / np.maximum(counts, 1)
    centres = u.min() + (idx + 0.5) * w
    return centres, mins, means, counts


def _notch(u: np.ndarray, a: np.ndarray, w: float) -> tuple[float, float]:
    """(u_notch, a_notch) by step 2 of the module rule."""
    centres, amin, amean, counts = _strip_stats(u, w, a)
    has = counts > 0
    inner = has & (centres > u.min() + EDGE_IGNORE_MM) & (centres < u.max() - EDGE_IGNORE_MM)
    if not inner.any():
        inner = has
    g1 = centres[inner][np.argmax(amean[inner])]
    g2 = float(u.mean())
    lo, hi = min(g1, g2) - SEARCH_MARGIN_MM, max(g1, g2) + SEARCH_MARGIN_MM
    window = np.flatnonzero(has & (centres >= lo) & (centres <= hi))
    if window.size == 0:
        window = np.flatnonzero(has)
    vals = amin[window]
    best = int(np.argmax(vals))
    roof = vals > 0.5 * (vals.max() + vals.min())
    start, stop = best, best + 1  # the run of notch strips around the best one
    while start > 0 and roof[start - 1] and window[start - 1] == window[start] - 1:
        start -= 1
    while stop < len(vals) and roof[stop] and window[stop] == window[stop - 1] + 1:
        stop += 1
    cut = (stop - start) // 4
    core = slice(start + cut, stop - cut)
    return float(np.mean(centres[window[start:stop]])), float(vals[core].max())


def femoral_subregions(
    labels: np.ndarray, geom: Geometry, frame: KneeFrame | None = None, boxes: Boxes | None = None
) -> Subregions:
    """Split femoral cartilage (label 4) into 11-15; see the module docstring for the rule.

    Returns the input unchanged with a ``reason`` when there is no femoral cartilage or medial
    and lateral cannot be told apart (no tibial cartilage and no menisci).
    """
    out = np.array(labels, dtype=np.uint8, copy=True)
    boxes = list(boxes) if boxes is not None else label_boxes(out)
    boxes = boxes + [None] * (15 - len(boxes))
    kji = label_voxels(out, FEM_CART, boxes)
    if len(kji) == 0:
        return Subregions(out, "no femoral cartilage in the label map", boxes=boxes)
    frame = frame or knee_frame(out, geom, boxes)
    pair = medial_lateral_centroids(out, geom, boxes)
    if frame is None or pair is None:
        return Subregions(out, "no tibial cartilage or menisci to tell medial from lateral", boxes=boxes)
    if len(kji) < 20:
        return Subregions(out, f"femoral cartilage too small to split ({len(kji)} voxels)", boxes=boxes)
    p = geom.kji_to_lps(kji)
    c = p.mean(axis=0)
    u, a, s = ((p - c) @ frame.ml), ((p - c) @ frame.ap), ((p - c) @ frame.si)
    w = float(max(geom.spacing))
    ap_kji = np.abs(geom.rot_kji.T @ frame.ap)  # components of ap along the array axes
    h = float(ap_kji @ geom.spacing_kji / max(ap_kji.sum(), 1e-9))
    u_notch, a_notch = _notch(u, a, w)
    a_ant = a_notch - 0.5 * h
    a_post = a_ant + WB_FRACTION * (float(a.min()) - a_ant)
    _, _, s_mean, _ = _strip_stats(a, w, s)
    s_cut = (1 - SUPERIOR_RATIO) * s_mean + SUPERIOR_RATIO * float(s.max())
    strip = np.floor((a - a.min()) / w).astype(np.int64)
    wb = (a <= a_ant) & (a > a_post) & (s <= s_cut[strip])
    u_med = float((pair[0] - c) @ frame.ml)
    medial = np.sign(u - u_notch) == np.sign(u_med - u_notch)
    code = np.where(a > a_ant, ANT_FEM,
                    np.where(wb, np.where(medial, MED_WB_FEM, LAT_WB_FEM),
                             np.where(medial, MED_POST_FEM, LAT_POST_FEM)))
    out[kji[:, 0], kji[:, 1], kji[:, 2]] = code.astype(np.uint8)
    for v in (ANT_FEM, MED_WB_FEM, LAT_WB_FEM, MED_POST_FEM, LAT_POST_FEM):
        sel = kji[code == v]
        boxes[v - 1] = (tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(sel.min(0), sel.max(0), strict=True))
                        if len(sel) else None)
    boxes[FEM_CART - 1] = None
    bounds = {
        "frame_source": frame.source,
        "ml_lps": [round(float(v), 5) for v in frame.ml],
        "ap_lps": [round(float(v), 5) for v in frame.ap],
        "si_lps": [round(float(v), 5) for v in frame.si],
        "centre_lps": [round(float(v), 3) for v in c],
        "notch_ml_mm": round(u_notch, 3),
        "anterior_boundary_ap_mm": round(a_ant, 3),
        "posterior_boundary_ap_mm": round(a_post, 3),
        "wb_fraction": WB_FRACTION,
    }
    return Subregions(out, None, bounds, boxes)

"""Cartilage thickness maps for the PDF report: continuous images in the knee's own frame.

The quantify stage leaves one thickness value per bone-surface vertex (``thickness_points.npz``:
LPS position, area, thickness, region). A reader wants maps, not dots: each map projects the
vertices of one cartilage plate onto a plane of the knee frame (``results["subregion_rule"]``:
``ml`` towards medial, ``ap`` anterior, ``si`` superior, ``centre``), spreads them with a Gaussian
(normalised convolution: the map is the area-weighted local mean thickness, nothing is invented
outside the covered surface) and keeps the region of each pixel, so region boundaries and region
means can be drawn on it.

* femoral cartilage: unrolled around the condyle axis (x: medial-lateral mm; y: arc length mm
  from posterior through inferior to anterior, at the median radius);
* tibial cartilage: both plateaus seen from above (x: medial-lateral; y: anterior up);
* patellar cartilage: seen from behind (x: medial-lateral; y: superior up).

Medial is always to the right, whatever the knee side, so two knees read the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

#: The fixed colour scale of every map (mm), so maps of two knees compare at a glance.
MAP_RANGE_MM = (0.0, 4.0)
_COVERED = 0.12  # normalised-convolution weight (surface area per pixel area) of a covered pixel


@dataclass
class ReportMap:
    """One map: ``values`` (mm, NaN outside), ``regions`` (label, 0 outside), axes in mm."""

    title: str
    values: np.ndarray
    regions: np.ndarray
    extent: tuple[float, float, float, float]  # x0, x1, y0, y1 (imshow, origin lower)
    x_label: str
    y_label: str
    means: dict[int, tuple[float, float]] = field(default_factory=dict)  # label -> (x, y)

    def boundaries(self) -> np.ndarray:
        """Pixels where the region changes (inside the covered area)."""
        r = self.regions
        edge = np.zeros(r.shape, dtype=bool)
        edge[:, 1:] |= (r[:, 1:] != r[:, :-1]) & (r[:, 1:] > 0) & (r[:, :-1] > 0)
        edge[1:, :] |= (r[1:, :] != r[:-1, :]) & (r[1:, :] > 0) & (r[:-1, :] > 0)
        return edge


def splat(x: np.ndarray, y: np.ndarray, area: np.ndarray, thickness: np.ndarray,
          region: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """Area-weighted Gaussian splat of scattered values onto a regular grid.

    The pixel size follows the plate's extent (about 120 pixels across, 0.25-1 mm), the kernel
    is 1.5 pixels; returns (values, regions, extent).
    """
    span = max(float(np.ptp(x)), float(np.ptp(y)), 1.0)
    step = float(np.clip(span / 120, 0.25, 1.0))
    pad = 3 * step
    x0, y0 = float(x.min()) - pad, float(y.min()) - pad
    nx = int(np.ceil((float(x.max()) + pad - x0) / step)) + 1
    ny = int(np.ceil((float(y.max()) + pad - y0) / step)) + 1
    col = np.clip(((x - x0) / step).astype(int), 0, nx - 1)
    row = np.clip(((y - y0) / step).astype(int), 0, ny - 1)
    flat = row * nx + col
    sigma = 1.5

    def smooth(weights: np.ndarray) -> np.ndarray:
        grid = np.bincount(flat, weights=weights, minlength=nx * ny).reshape(ny, nx)
        return ndimage.gaussian_filter(grid, sigma, mode="constant")

    pixel_area = step * step
    den = smooth(area) / pixel_area
    num = smooth(area * thickness) / pixel_area
    covered = den > _COVERED
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(covered, num / np.maximum(den, 1e-12), np.nan)
    codes = [int(c) for c in np.unique(region) if c > 0]
    regions = np.zeros((ny, nx), dtype=np.int16)
    if codes:
        stack = np.stack([smooth(np.where(region == c, area, 0.0)) for c in codes])
        regions = np.where(covered, np.asarray(codes, dtype=np.int16)[stack.argmax(axis=0)], 0)
    extent = (x0, x0 + nx * step, y0, y0 + ny * step)
    return values.astype(np.float32), regions.astype(np.int16), extent


def _frame(rule: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    try:
        vectors = [np.asarray(rule[k], dtype=float) for k in ("ml_lps", "ap_lps", "si_lps",
                                                              "centre_lps")]
    except (KeyError, TypeError, ValueError):
        return None
    if any(v.shape != (3,) or not np.isfinite(v).all() for v in vectors):
        return None
    return vectors[0], vectors[1], vectors[2], vectors[3]


def _plate(points: Mapping[str, np.ndarray], bone: str, codes: tuple[int, ...]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    try:
        p = np.asarray(points[f"{bone}_vertices_lps"], dtype=float)
        area = np.asarray(points[f"{bone}_area_mm2"], dtype=float)
        t = np.asarray(points[f"{bone}_thickness_mm"], dtype=float)
        region = np.asarray(points[f"{bone}_region"])
    except KeyError:
        return None
    sel = np.isin(region, codes) & (t > 0) & np.isfinite(t)
    if sel.sum() < 10:
        return None
    return p[sel], area[sel], t[sel], region[sel].astype(np.int16)


def _with_means(m: ReportMap) -> ReportMap:
    x0, x1, y0, y1 = m.extent
    sx, sy = (x1 - x0) / m.regions.shape[1], (y1 - y0) / m.regions.shape[0]
    for code in (int(c) for c in np.unique(m.regions)):
        if code > 0:
            rows, cols = np.nonzero(m.regions == code)
            m.means[code] = (x0 + (float(cols.mean()) + 0.5) * sx,
                             y0 + (float(rows.mean()) + 0.5) * sy)
    return m


def report_maps(points: Mapping[str, np.ndarray] | None,
                rule: Mapping[str, Any] | None) -> list[ReportMap]:
    """The femoral, tibial and patellar maps that the data allow (possibly none)."""
    frame = _frame(rule or {})
    if points is None or frame is None:
        return []
    ml, ap, si, centre = frame
    out: list[ReportMap] = []
    fem = _plate(points, "femur", (11, 12, 13, 14, 15))
    if fem is not None:
        p, area, t, region = fem
        d = p - centre
        u, a, s = d @ ml, d @ ap, d @ si
        radius = float(np.median(np.hypot(a, s)))
        arc = np.arctan2(a, -s) * radius  # 0 = inferior, + anterior, - posterior
        values, regions, extent = splat(u, arc, area, t, region)
        out.append(_with_means(ReportMap(
            "Femoral cartilage (unrolled)", values, regions, extent,
            "lateral  <-  mm  ->  medial", "posterior  <-  mm  ->  anterior")))
    flat_plates = (  # plate, its codes, title, the plane's vertical axis, axis labels
        ("tibia", (5, 6), "Tibial cartilage (from above)", ap, "posterior  <-  ->  anterior"),
        ("patella", (7,), "Patellar cartilage (from behind)", si, "inferior  <-  ->  superior"),
    )
    for bone, codes, title, vertical, y_label in flat_plates:
        plate = _plate(points, bone, codes)
        if plate is None:
            continue
        p, area, t, region = plate
        d = p - centre
        values, regions, extent = splat(d @ ml, d @ vertical, area, t, region)
        out.append(_with_means(ReportMap(title, values, regions, extent,
                                         "lateral  <-  mm  ->  medial", y_label)))
    return out


def map_from_grid(values: np.ndarray) -> ReportMap:
    """A legacy unrolled femoral map (2-D bins, NaN = empty) filled between its bins."""
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    rows, cols = np.nonzero(ok)
    if not ok.any():
        return ReportMap("Femoral cartilage thickness", v.astype(np.float32),
                         np.zeros(v.shape, np.int16), (0, v.shape[1], 0, v.shape[0]), "", "")
    filled, regions, extent = splat(cols.astype(float), rows.astype(float),
                                    np.ones(rows.size), v[ok], np.full(rows.size, 4))
    return ReportMap("Femoral cartilage thickness", filled, regions, extent,
                     "lateral  <-  ->  medial", "posterior  <-  ->  anterior")

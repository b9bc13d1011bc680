"""qDESS T2 from the two echoes (analytic formula of Sveinsson et al., MRI 2017, as the research
pipeline computed it with dosma; written here because dosma no longer installs).

With TR, TE (echo 1), flip angle ``a`` and the GE gradient tags GlArea (0019,10B6) and Tg
(0019,10B7, microseconds); times in seconds::

    Gl  = GlArea / Tg_us * 100
    dkL = 2 pi * 4258 * Gl * Tg_s
    E   = exp(-TR/T1 - TR dkL^2 D)                   T1 = 1.2 s, D = 1.25e-9 (dosma's defaults)
    k   = sin(a/2)^2 (1 + E) / (1 - cos(a) E)
    c1  = (TR - Tg_s/3) dkL^2 D
    T2  = -2 (TR - TE) / (ln((S2/S1) / k) + c1)

Without the vendor tags the low-spoiling approximation is used: the diffusion terms vanish
(``dkL = 0``: ``E = exp(-TR/T1)``, ``c1 = 0``), which is exact for weak spoiler gradients and
overestimates T2 slightly otherwise. Voxels with T2 <= 0 or >= 80 ms (or no signal) are invalid
and excluded from every statistic. When RepetitionTime is missing, TR = (TE1 + TE2) / 2 (the
second qDESS echo is written at 2 TR - TE).

Deep / superficial halves: the relative depth of a cartilage voxel is
``d_bone / (d_bone + d_surface)``, the Euclidean distances (mm, voxel centres) to the nearest bone
voxel and to the nearest voxel that is neither this cartilage nor bone; deep is depth < 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.quantify.geometry import (
    FEM_SUBREGIONS,
    FEMUR,
    LAT_TIB_CART,
    MED_TIB_CART,
    PAT_CART,
    PATELLA,
    TIBIA,
    Boxes,
    Geometry,
)

T2_MIN_MS, T2_MAX_MS = 0.0, 80.0
GAMMA_HZ_PER_G = 4258.0
MIN_VOXELS = 10
DEPTH_MARGIN_MM = 2.0

#: T2 region key -> (cartilage label in the subregion map, its bone label)
T2_REGIONS: dict[str, tuple[int, int]] = {
    "ant_fem_cart": (FEM_SUBREGIONS[0], FEMUR),
    "med_wb_fem_cart": (FEM_SUBREGIONS[1], FEMUR),
    "lat_wb_fem_cart": (FEM_SUBREGIONS[2], FEMUR),
    "med_post_fem_cart": (FEM_SUBREGIONS[3], FEMUR),
    "lat_post_fem_cart": (FEM_SUBREGIONS[4], FEMUR),
    "med_tib_cart": (MED_TIB_CART, TIBIA),
    "lat_tib_cart": (LAT_TIB_CART, TIBIA),
    "pat_cart": (PAT_CART, PATELLA),
}
#: plates whose depth is computed together: (cartilage labels, bone label)
_PLATES = ((FEM_SUBREGIONS, FEMUR), ((MED_TIB_CART, LAT_TIB_CART), TIBIA), ((PAT_CART,), PATELLA))


@dataclass(frozen=True)
class QdessProtocol:
    """Acquisition parameters of the formula (ms, degrees; GE gradient tags or None)."""

    tr_ms: float
    te_ms: float
    flip_deg: float
    gl_area: float | None = None
    tg_us: float | None = None
    t1_ms: float = 1200.0
    diffusivity: float = 1.25e-9

    @property
    def spoiling(self) -> str:
        """Which form of the formula applies."""
        return "vendor gradient tags" if self.gl_area and self.tg_us else "low-spoiling approximation"

    def constants(self) -> tuple[float, float]:
        """(k, c1) of the formula."""
        tr = self.tr_ms * 1e-3
        if self.gl_area and self.tg_us:
            tg = self.tg_us * 1e-6
            gl = self.gl_area / self.tg_us * 100.0
            dkl = 2.0 * math.pi * GAMMA_HZ_PER_G * gl * tg
        else:
            tg, dkl = 0.0, 0.0
        a = math.radians(self.flip_deg)
        e = math.exp(-tr / (self.t1_ms * 1e-3) - tr * dkl**2 * self.diffusivity)
        k = math.sin(a / 2) ** 2 * (1 + e) / (1 - math.cos(a) * e)
        c1 = (tr - tg / 3.0) * dkl**2 * self.diffusivity
        return k, c1

    def as_dict(self) -> dict[str, Any]:
        """For results.json."""
        return {"tr_ms": self.tr_ms, "te_ms": self.te_ms, "flip_deg": self.flip_deg,
                "gl_area": self.gl_area, "tg_us": self.tg_us, "t1_ms": self.t1_ms,
                "diffusivity": self.diffusivity, "spoiling": self.spoiling}


def protocol_from(acquisition: Mapping[str, Any], echo_times_ms: Sequence[float | None]) -> QdessProtocol:
    """The protocol from the series reader's ``acquisition`` dict and echo times.

    Raises
    ------
    ValueError
        When echo times or the flip angle are missing.
    """
    times = [t for t in echo_times_ms if t is not None]
    if len(times) < 2:
        raise ValueError("two echo times are needed for qDESS T2")
    te1, te2 = float(times[0]), float(times[1])
    tr = acquisition.get("repetition_time_ms") or (te1 + te2) / 2.0
    flip = acquisition.get("flip_angle_deg")
    if not flip:
        raise ValueError("FlipAngle is missing from the series header")
    return QdessProtocol(tr_ms=float(tr), te_ms=te1, flip_deg=float(flip),
                         gl_area=acquisition.get("gl_area"), tg_us=acquisition.get("tg_us"))


def t2_map(echo1: np.ndarray, echo2: np.ndarray, protocol: QdessProtocol) -> np.ndarray:
    """T2 (ms, float32) per voxel; NaN where invalid (no signal, T2 <= 0 or >= 80 ms)."""
    k, c1 = protocol.constants()
    tr, te = protocol.tr_ms * 1e-3, protocol.te_ms * 1e-3
    s1 = np.asarray(echo1, dtype=np.float32)
    s2 = np.asarray(echo2, dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ratio = s2 / s1
        t2 = (-2000.0 * (tr - te) / (np.log(ratio / np.float32(k)) + np.float32(c1))).astype(np.float32)
    bad = ~np.isfinite(t2) | (t2 <= T2_MIN_MS) | (t2 >= T2_MAX_MS) | (s1 <= 0) | (s2 <= 0)
    t2[bad] = np.nan
    return t2


def _stats(values: np.ndarray) -> dict[str, float] | None:
    if values.size < MIN_VOXELS:
        return None
    return {"mean": float(np.mean(values)), "median": float(np.median(values)), "std": float(np.std(values))}


def _box(boxes: Boxes, codes: Sequence[int], shape: tuple[int, ...], margin: np.ndarray) -> tuple[slice, ...] | None:
    found = [boxes[c - 1] for c in codes if c - 1 < len(boxes) and boxes[c - 1] is not None]
    if not found:
        return None
    return tuple(slice(max(0, min(b[a].start for b in found) - int(margin[a])),
                       min(shape[a], max(b[a].stop for b in found) + int(margin[a]))) for a in range(3))


def region_depth(region_map: np.ndarray, geom: Geometry, boxes: Boxes, code: int, plate: Sequence[int], bone: int
                 ) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """(crop, relative depth on it) for one region's bounding box + 2 mm, None if absent.

    The plate's other regions count as cartilage (a subregion border is not a surface); the
    depth is NaN where the crop holds no bone.
    """
    sp = geom.spacing_kji
    roi = _box(boxes, (code,), region_map.shape, np.ceil(DEPTH_MARGIN_MM / sp))
    if roi is None:
        return None
    crop = region_map[roi]
    cart = np.isin(crop, plate)
    bone_mask = crop == bone
    if not bone_mask.any():
        return roi, np.full(crop.shape, np.nan, dtype=np.float32)
    d_bone = ndimage.distance_transform_edt(~bone_mask, sampling=sp)
    d_surf = ndimage.distance_transform_edt(cart | bone_mask, sampling=sp)
    with np.errstate(invalid="ignore", divide="ignore"):
        depth = np.where(cart, d_bone / (d_bone + d_surf), np.nan).astype(np.float32)
    return roi, depth


def t2_statistics(
    echo1: np.ndarray, echo2: np.ndarray, protocol: QdessProtocol, region_map: np.ndarray,
    geom: Geometry, boxes: Boxes,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """``<region>[_deep|_superficial]_t2_ms_<mean|median|std>`` and reasons for nulls.

    T2 and depth are computed on each region's crop only (the echoes are full volumes on the
    label grid).
    """
    out: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    for codes, bone in _PLATES:
        for region, (code, _) in T2_REGIONS.items():
            if code not in codes:
                continue
            found = region_depth(region_map, geom, boxes, code, codes, bone)
            parts: dict[str, np.ndarray] = {}
            if found is not None:
                roi, depth = found
                vals = t2_map(echo1[roi], echo2[roi], protocol)
                ok = (region_map[roi] == code) & np.isfinite(vals)
                parts = {"": vals[ok], "_deep": vals[ok & (depth < 0.5)],
                         "_superficial": vals[ok & (depth >= 0.5)]}
            for part in ("", "_deep", "_superficial"):
                st = _stats(parts[part]) if part in parts else None
                for stat in ("mean", "median", "std"):
                    out[f"{region}{part}_t2_ms_{stat}"] = None if st is None else round(st[stat], 3)
                if st is None:
                    reasons[f"{region}{part}_t2_ms"] = (
                        f"fewer than {MIN_VOXELS} voxels with valid T2 (0 < T2 < 80 ms)" if found is not None
                        else "no such cartilage in the label map")
    return out, reasons

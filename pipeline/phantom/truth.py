"""Ground truth of a phantom: label maps from materials, continuous volumes, truth.json content.

Volumes: ``volumes_ml`` are the volumes of the continuous (analytic) anatomy inside the field of
view, integrated exactly for voxels whose 6-neighbourhood holds one label and with 3x3x3 (default)
sub-samples for voxels on a label boundary; ``label_volumes_ml`` are the voxel counts of
``labels.nii.gz`` times the voxel volume. Thickness truth is the configured thickness of each
region (exact along bone-surface normals, see :mod:`pipeline.phantom.geometry`). T2 truth is the
T2 of each region at mid-depth, rising linearly with depth (see
:func:`pipeline.phantom.contrast.t2_map`); the T2 truth statistics are those of the noiseless T2
map over the region's voxels in the truth map (and over its deep and superficial halves).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from pipeline.labels import TISSUE_KEYS
from pipeline.phantom import geometry as g
from pipeline.phantom.pose import ImageGrid

#: Canonical labels (DESIGN.md) -> result-key prefix (as the encoders and results.json use).
LABEL_KEYS: dict[int, str] = TISSUE_KEYS

_LABEL_OF_MATERIAL = np.zeros(g.N_MATERIALS, dtype=np.uint8)
for _c in range(1, 10):
    _LABEL_OF_MATERIAL[_c] = _c
for _c in (g.ANT_FEM, g.MED_WB_FEM, g.LAT_WB_FEM, g.MED_POST_FEM, g.LAT_POST_FEM):
    _LABEL_OF_MATERIAL[_c] = g.FEM_CART

_SUBREGION_OF_MATERIAL = _LABEL_OF_MATERIAL.copy()
for _c in (g.ANT_FEM, g.MED_WB_FEM, g.LAT_WB_FEM, g.MED_POST_FEM, g.LAT_POST_FEM):
    _SUBREGION_OF_MATERIAL[_c] = _c


def labels_from_material(material: np.ndarray) -> np.ndarray:
    """Canonical label map (0-9) from a material map."""
    return _LABEL_OF_MATERIAL[material]


def subregions_from_material(material: np.ndarray) -> np.ndarray:
    """Label map with femoral cartilage split into its subregions 11-15."""
    return _SUBREGION_OF_MATERIAL[material]


def boundary_mask(labels: np.ndarray) -> np.ndarray:
    """Voxels whose label differs from one of their 6 neighbours (either side of a boundary)."""
    b = np.zeros(labels.shape, dtype=bool)
    for axis in range(3):
        a = [slice(None)] * 3
        c = [slice(None)] * 3
        a[axis], c[axis] = slice(1, None), slice(None, -1)
        diff = labels[tuple(a)] != labels[tuple(c)]
        b[tuple(a)] |= diff
        b[tuple(c)] |= diff
    return b


def integrate_volumes(
    labels: np.ndarray,
    grid: ImageGrid,
    label_at: Callable[[np.ndarray], np.ndarray],
    *,
    sub: int = 3,
    chunk: int = 100_000,
) -> dict[int, float]:
    """Continuous volume (mm^3) of labels 1-9 inside the field of view.

    ``label_at`` maps continuous voxel indices (N, 3; i, j, k) to canonical labels. Boundary voxels are sub-sampled
    ``sub``^3 times; the others count whole.
    """
    voxel = float(np.prod(grid.spacing))
    bnd = boundary_mask(labels)
    counts = np.bincount(labels[~bnd].ravel(), minlength=10)[:10].astype(np.float64)
    kji = np.argwhere(bnd)
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    oi, oj, ok = np.meshgrid(offs, offs, offs, indexing="ij")
    sub_off = np.stack([oi.ravel(), oj.ravel(), ok.ravel()], axis=1)  # (i, j, k) offsets
    per = sub**3
    for start in range(0, len(kji), chunk):
        part = kji[start:start + chunk]
        idx = part[:, ::-1].astype(np.float64)  # (i, j, k)
        pts = (idx[:, None, :] + sub_off[None, :, :]).reshape(-1, 3)
        lab = label_at(pts)
        counts += np.bincount(lab, minlength=10)[:10] / per
    return {lab: float(counts[lab] * voxel) for lab in range(1, 10)}


def t2_statistics(
    t2: np.ndarray, subregions: np.ndarray, depth: np.ndarray
) -> dict[str, float]:
    """T2 truth per cartilage region: statistics of the noiseless T2 map over the region's voxels.

    Keys ``<region>_t2_ms_mean|median|std`` and the same for the ``deep`` (relative depth < 0.5,
    bone side) and ``superficial`` halves, e.g. ``med_tib_cart_deep_t2_ms_mean``.
    """
    out: dict[str, float] = {}
    for region, code in g.REGION_CODES.items():
        inside = subregions == code
        halves = {"": inside, "_deep": inside & (depth < 0.5), "_superficial": inside & (depth >= 0.5)}
        for part, mask in halves.items():
            vals = t2[mask].astype(np.float64)
            for stat, fn in (("mean", np.mean), ("median", np.median), ("std", np.std)):
                value = float(fn(vals)) if vals.size else None
                out[f"{region}{part}_t2_ms_{stat}"] = None if value is None else round(value, 4)  # type: ignore[assignment]
    return out


def truth_record(
    *,
    side: str,
    volumes_mm3: Mapping[int, float],
    labels: np.ndarray,
    grid: ImageGrid,
    thickness: Mapping[str, float],
    t2_stats: Mapping[str, float],
) -> dict[str, object]:
    """The measurement part of truth.json (key names of the research pipeline / results.json)."""
    voxel_ml = float(np.prod(grid.spacing)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=10)
    rec: dict[str, object] = {"side": side}
    rec["volumes_ml"] = {f"{LABEL_KEYS[k]}_ml": round(volumes_mm3[k] / 1000.0, 6) for k in LABEL_KEYS}
    rec["label_volumes_ml"] = {
        f"{LABEL_KEYS[k]}_ml": round(float(counts[k]) * voxel_ml, 6) for k in LABEL_KEYS
    }
    thick: dict[str, float] = {}
    for region, t in thickness.items():
        thick[f"{region}_mm_mean"] = float(t)
        thick[f"{region}_mm_median"] = float(t)
        thick[f"{region}_mm_std"] = 0.0
    rec["thickness_mm"] = thick
    rec["t2_ms"] = dict(t2_stats)
    return rec

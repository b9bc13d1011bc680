"""Voxel grid <-> patient LPS, and the knee's anatomical frame estimated from a label map.

Why a frame of its own: the research pipeline worked on sagittal arrays and took the array axes as
the knee's medial-lateral, superior-inferior and anterior-posterior axes. The node accepts any
orientation (sagittal, coronal, axial, oblique) and knees that are not square to the scanner, so
every rule that needs an anatomical direction uses the frame below instead of the array axes.

Arrays are in SimpleITK numpy order ``[k, j, i]``. Physical points are patient LPS (mm).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from kneenode.errors import ErrorCode, NodeError

FEMUR, TIBIA, PATELLA = 1, 2, 3
FEM_CART, MED_TIB_CART, LAT_TIB_CART, PAT_CART = 4, 5, 6, 7
MED_MEN, LAT_MEN = 8, 9
ANT_FEM, MED_WB_FEM, LAT_WB_FEM, MED_POST_FEM, LAT_POST_FEM = 11, 12, 13, 14, 15
FEM_SUBREGIONS = (ANT_FEM, MED_WB_FEM, LAT_WB_FEM, MED_POST_FEM, LAT_POST_FEM)


@dataclass(frozen=True)
class Geometry:
    """Grid of a label map: spacing/origin in SimpleITK (i, j, k) order, direction row-major 3x3.

    ``direction`` columns are the LPS unit vectors of the index axes i, j, k (SimpleITK).
    """

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]) -> Geometry:
        """Validated geometry (positive spacing, orthonormal direction)."""
        sp = tuple(float(v) for v in spacing)
        d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        if len(sp) != 3 or min(sp) <= 0 or len(tuple(origin)) != 3:
            raise NodeError(ErrorCode.INVALID_FORMAT, f"bad label-map geometry: spacing {sp}")
        if not np.allclose(d.T @ d, np.eye(3), atol=1e-4):
            raise NodeError(ErrorCode.INVALID_FORMAT, "label-map direction is not orthonormal")
        return cls(sp, tuple(float(v) for v in origin), tuple(float(v) for v in d.ravel()))  # type: ignore[arg-type]

    @classmethod
    def from_image(cls, image: object) -> Geometry:
        """Geometry of a SimpleITK image."""
        return cls.of(image.GetSpacing(), image.GetOrigin(), image.GetDirection())  # type: ignore[attr-defined]

    @property
    def spacing_kji(self) -> np.ndarray:
        """Spacing in array axis order (k, j, i)."""
        return np.asarray(self.spacing[::-1], dtype=np.float64)

    @property
    def rot_kji(self) -> np.ndarray:
        """3x3 rotation taking a vector in scaled array axes (mm along k, j, i) to LPS."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)[:, ::-1]

    @property
    def voxel_mm3(self) -> float:
        """Volume of one voxel."""
        return float(np.prod(self.spacing))

    def kji_to_lps(self, kji: np.ndarray) -> np.ndarray:
        """Continuous array indices (N, 3) in (k, j, i) order -> LPS points (N, 3)."""
        return self.mm_to_lps(np.asarray(kji, dtype=np.float64) * self.spacing_kji)

    def mm_to_lps(self, mm: np.ndarray) -> np.ndarray:
        """Points in scaled array axes (mm, (k, j, i) order, 0 at voxel 0) -> LPS."""
        return self.vec_to_lps(mm) + np.asarray(self.origin)

    def vec_to_lps(self, v: np.ndarray) -> np.ndarray:
        """Direction vectors in scaled array axes -> LPS (a rotation)."""
        v = np.asarray(v, dtype=np.float64)
        r = self.rot_kji
        out = np.empty(v.shape, dtype=np.float64)
        for row in range(3):  # per component: numpy's (N, 3) @ (3, 3) is slow
            out[..., row] = v[..., 0] * r[row, 0] + v[..., 1] * r[row, 1] + v[..., 2] * r[row, 2]
        return out


Boxes = list  # ndimage.find_objects output: per label value v, boxes[v - 1] (slices or None)


def label_boxes(labels: np.ndarray, max_label: int = 15) -> Boxes:
    """Bounding box of every label value 1..max_label (one pass over the volume)."""
    boxes = list(ndimage.find_objects(labels, max_label=max_label))
    return boxes + [None] * (max_label - len(boxes))


def label_voxels(labels: np.ndarray, value: int, boxes: Boxes) -> np.ndarray:
    """(N, 3) array indices (k, j, i) of the voxels of ``value`` (searched in its box only)."""
    box = boxes[value - 1] if value - 1 < len(boxes) else None
    if box is None:
        return np.zeros((0, 3), dtype=np.int64)
    local = np.nonzero(labels[box] == value)
    return np.stack([local[a] + box[a].start for a in range(3)], axis=1)


def centroids_kji(labels: np.ndarray, values: Sequence[int], boxes: Boxes | None = None) -> dict[int, np.ndarray | None]:
    """Centroid (k, j, i) of each label value, None for an absent one (searched in its box)."""
    out: dict[int, np.ndarray | None] = {}
    boxes = boxes if boxes is not None else label_boxes(labels, max(values))
    for v in values:
        box = boxes[v - 1] if v - 1 < len(boxes) else None
        if box is None:
            out[v] = None
            continue
        idx = np.nonzero(labels[box] == v)
        out[v] = np.array([idx[a].mean() + box[a].start for a in range(3)])
    return out


@dataclass(frozen=True)
class KneeFrame:
    """Anatomical unit vectors in LPS: ``ml`` towards medial, ``ap`` anterior, ``si`` superior.

    ``source`` says how it was found (``tibial cartilage``, ``menisci`` or ``patient axes``).
    """

    ml: np.ndarray
    ap: np.ndarray
    si: np.ndarray
    source: str


def _pair(cents: dict[int, np.ndarray | None], med: int, lat: int) -> tuple[np.ndarray, np.ndarray] | None:
    a, b = cents.get(med), cents.get(lat)
    return (a, b) if a is not None and b is not None else None


def medial_lateral_centroids(
    labels: np.ndarray, geom: Geometry, boxes: Boxes | None = None
) -> tuple[np.ndarray, np.ndarray, str] | None:
    """LPS centroids of the medial and lateral compartment: tibial cartilage, else the menisci."""
    cents = centroids_kji(labels, [MED_TIB_CART, LAT_TIB_CART, MED_MEN, LAT_MEN], boxes)
    for med, lat, name in ((MED_TIB_CART, LAT_TIB_CART, "tibial cartilage"), (MED_MEN, LAT_MEN, "menisci")):
        pair = _pair(cents, med, lat)
        if pair is not None:
            m, l_ = geom.kji_to_lps(np.stack(pair))
            if np.linalg.norm(m - l_) > 1e-6:
                return m, l_, name
    return None


def knee_frame(labels: np.ndarray, geom: Geometry, boxes: Boxes | None = None) -> KneeFrame | None:
    """The knee's anatomical frame, or None when medial and lateral cannot be told apart.

    Rule: ``ml`` = unit vector from the lateral to the medial tibial cartilage centroid (menisci
    when there is no tibial cartilage); ``si`` = normal of the tibial cartilage plates (the
    smallest principal axis of their voxel centres, made orthogonal to ``ml`` and pointing to
    patient superior, +z); ``ap`` = the third axis, pointing to patient anterior (-y). Without
    tibial cartilage ``si`` is the patient z axis made orthogonal to ``ml``.
    """
    boxes = boxes if boxes is not None else label_boxes(labels, LAT_MEN)
    pair = medial_lateral_centroids(labels, geom, boxes)
    if pair is None:
        return None
    med, lat, source = pair
    ml = (med - lat) / np.linalg.norm(med - lat)
    si = np.array([0.0, 0.0, 1.0])
    if source == "tibial cartilage":
        pts = [label_voxels(labels, v, boxes) for v in (MED_TIB_CART, LAT_TIB_CART)]
        xyz = geom.kji_to_lps(np.concatenate(pts))
        if len(xyz) >= 10:
            cov = np.cov((xyz - xyz.mean(axis=0)).T)
            _w, v = np.linalg.eigh(cov)
            si = v[:, 0]
    si = si - ml * float(si @ ml)
    if np.linalg.norm(si) < 1e-6:
        return None
    si = si / np.linalg.norm(si)
    if si[2] < 0:
        si = -si
    ap = np.cross(si, ml)
    if ap[1] > 0:  # anterior is patient -y
        ap = -ap
    return KneeFrame(ml=ml, ap=ap, si=si, source=source)

"""Femur and femoral-cartilage surfaces from a label map, in patient (LPS) millimetres.

The preparation of the research pipeline, as pure functions:

- knee side from the medial vs lateral tibial cartilage centroids (:func:`knee_side`);
- the femur clipping rule (:func:`femur_clip_height`): a femur whose superior-inferior extent
  exceeds 0.7 x its medial-lateral width is cut to 0.7 x width above its distal end, else 95 % of
  its height is kept (drops the field-of-view cut);
- marching cubes (scikit-image) on the Gaussian-smoothed mask (:func:`mask_surface`);
- left knees mirrored in x about the femur centroid (:func:`mirror_x`) so every knee looks like a
  right knee to the model;
- signed distances of points to a surface (:func:`signed_distance`), used both for the training
  samples of the demo model and for the cross-surface SDF targets of a fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage import measure

FEMUR, FEM_CART, MED_TIB_CART, LAT_TIB_CART = 1, 4, 5, 6
FEM_SUBREGIONS = (11, 15)  # femoral cartilage split into subregions counts as femoral cartilage
CLIP_RATIO = 0.7
SHORT_KEEP = 0.95


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of a label map stored ``[k, j, i]``: spacing/origin per (i, j, k), direction
    with the index axes as columns (SimpleITK's conventions)."""

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def matrix(self) -> np.ndarray:
        """``LPS = matrix @ (i, j, k) + origin``."""
        d = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        return d * np.asarray(self.spacing, dtype=np.float64)[None, :]

    def to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) indices (N, 3) -> LPS mm."""
        return np.asarray(ijk, dtype=np.float64) @ self.matrix.T + np.asarray(self.origin)

    def to_index(self, lps: np.ndarray) -> np.ndarray:
        """LPS mm (N, 3) -> continuous (i, j, k) indices."""
        inv = np.linalg.inv(self.matrix)
        return (np.asarray(lps, dtype=np.float64) - np.asarray(self.origin)) @ inv.T


@dataclass(frozen=True)
class Surface:
    """A triangle mesh (vertices in LPS mm) and the smoothed mask it was cut from (for inside
    tests)."""

    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64
    occupancy: np.ndarray  # smoothed mask [k, j, i], float32, 0.5 = surface
    geometry: Geometry


def voxel_centroid(mask: np.ndarray, geom: Geometry) -> np.ndarray:
    """Physical centroid (LPS mm) of the voxels of ``mask``."""
    kji = np.argwhere(mask)
    if kji.size == 0:
        raise ValueError("empty mask has no centroid")
    return geom.to_lps(kji[:, ::-1].mean(axis=0, keepdims=True))[0]


def knee_side(labels: np.ndarray, geom: Geometry) -> str:
    """``right`` if the medial tibial cartilage centroid has the greater LPS x, else ``left``.

    Pure function shared with quantification (issue 5). Raises ``ValueError`` when a tibial
    cartilage label is missing.
    """
    med_mask, lat_mask = labels == MED_TIB_CART, labels == LAT_TIB_CART
    if not (med_mask.any() and lat_mask.any()):
        raise ValueError("cannot tell the knee side: medial (5) or lateral (6) tibial cartilage "
                         "label is missing; pass the side explicitly")
    med = voxel_centroid(med_mask, geom)
    lat = voxel_centroid(lat_mask, geom)
    return "right" if med[0] > lat[0] else "left"


def femur_clip_height(z_extent_mm: float, width_mm: float) -> float:
    """Height (mm above the distal end) of femur kept by the clipping rule."""
    if z_extent_mm > CLIP_RATIO * width_mm:
        return CLIP_RATIO * width_mm
    return SHORT_KEEP * z_extent_mm


def clip_masks(femur: np.ndarray, others: list[np.ndarray], geom: Geometry) -> tuple[np.ndarray, list[np.ndarray], float]:
    """Apply the clipping rule to the femur (and the same superior limit to ``others``).

    Returns the clipped masks and the LPS z of the cut. Superior is +z in LPS.
    """
    kji = np.argwhere(femur)
    if kji.size == 0:
        raise ValueError("label map has no femur")
    pts = geom.to_lps(kji[:, ::-1].astype(np.float64))
    width = float(np.ptp(pts[:, 0]))
    zmin, zmax = float(pts[:, 2].min()), float(pts[:, 2].max())
    z_cut = zmin + femur_clip_height(zmax - zmin, width)
    z_all = _voxel_z(femur.shape, geom)
    keep = z_all <= z_cut
    return femur & keep, [m & keep for m in others], z_cut


def _voxel_z(shape: tuple[int, ...], geom: Geometry) -> np.ndarray:
    """LPS z of every voxel centre of a ``[k, j, i]`` array (broadcast, no full index grid)."""
    m = geom.matrix
    nk, nj, ni = shape
    kk = np.arange(nk)[:, None, None] * m[2, 2]
    jj = np.arange(nj)[None, :, None] * m[2, 1]
    ii = np.arange(ni)[None, None, :] * m[2, 0]
    return kk + jj + ii + geom.origin[2]


def mask_surface(mask: np.ndarray, geom: Geometry, sigma_vox: float = float(np.sqrt(0.5))) -> Surface:
    """Marching cubes (level 0.5) on the Gaussian-smoothed mask, vertices in LPS mm.

    Only the mask's bounding box (zero-padded by three voxels) is smoothed: fast on a clinical
    grid, and a surface cut by the clip or the field of view is closed (a watertight mesh has a
    well-defined inside). The occupancy kept for :func:`inside` is that padded crop.
    """
    if not mask.any():
        raise ValueError("empty mask has no surface")
    pad = 3
    nz = np.argwhere(mask)
    lo, hi = nz.min(axis=0), nz.max(axis=0) + 1  # [k, j, i] bounding box: smooth only the crop
    crop = np.pad(mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32), pad)
    occ = ndimage.gaussian_filter(crop, sigma_vox)
    verts, faces, _, _ = measure.marching_cubes(occ, level=0.5)
    corner = lo[::-1].astype(np.float64) - pad  # (i, j, k) index of the padded crop's voxel 0
    crop_geom = Geometry(spacing=geom.spacing, origin=tuple(geom.to_lps(corner[None])[0]),  # type: ignore[arg-type]
                         direction=geom.direction)
    return Surface(vertices=crop_geom.to_lps(verts[:, ::-1]),
                   faces=faces.astype(np.int64)[:, ::-1].copy(), occupancy=occ, geometry=crop_geom)


def inside(surface: Surface, points: np.ndarray) -> np.ndarray:
    """True where LPS ``points`` lie inside ``surface`` (smoothed mask above 0.5)."""
    ijk = surface.geometry.to_index(points)
    coords = ijk[:, ::-1].T
    val = ndimage.map_coordinates(surface.occupancy, coords, order=1, mode="constant", cval=0.0)
    return val > 0.5


def signed_distance(surface: Surface, points: np.ndarray, tree: cKDTree | None = None) -> np.ndarray:
    """Signed distance (mm, negative inside) of ``points`` to ``surface``.

    Magnitude: distance to the nearest vertex (vertices of a marching-cubes mesh are < 1 voxel
    apart, so this is within half a voxel of the point-to-triangle distance); sign: the smoothed
    mask. ``tree`` may be passed to reuse a KD-tree of the vertices.
    """
    tree = tree or cKDTree(surface.vertices)
    dist, _ = tree.query(points, workers=-1)
    return np.where(inside(surface, points), -dist, dist)


def mirror_x(points: np.ndarray, centre_x: float) -> np.ndarray:
    """Reflect points in the plane ``x = centre_x`` (a left knee becomes a right knee)."""
    out = np.array(points, dtype=np.float64, copy=True)
    out[:, 0] = 2.0 * centre_x - out[:, 0]
    return out


def flip_faces(faces: np.ndarray) -> np.ndarray:
    """Reverse the triangle winding (a mirrored mesh keeps outward normals)."""
    return faces[:, ::-1].copy()


@dataclass(frozen=True)
class KneeSurfaces:
    """Prepared surfaces of one knee, in (possibly mirrored) LPS mm."""

    bone: Surface
    cartilage: Surface | None
    side: str
    mirrored: bool
    mirror_centre_x: float
    clip_z_mm: float


def prepare_surfaces(labels: np.ndarray, geom: Geometry, *, with_cartilage: bool,
                     side: str | None = None) -> KneeSurfaces:
    """Femur (and femoral cartilage) surfaces of a canonical label map, mirrored if left.

    ``side`` overrides the detection from the tibial cartilage (needed when those labels are
    absent). Mirroring happens on the vertices: the occupancy grids stay in the original frame,
    so :func:`inside` must be queried with un-mirrored points (see :func:`unmirror`).
    """
    side = side or knee_side(labels, geom)
    femur = labels == FEMUR
    cart = (labels == FEM_CART) | ((labels >= FEM_SUBREGIONS[0]) & (labels <= FEM_SUBREGIONS[1]))
    femur, (cart,), z_cut = clip_masks(femur, [cart], geom)
    bone = mask_surface(femur, geom)
    cartilage = mask_surface(cart, geom) if with_cartilage else None
    cx = float(voxel_centroid(femur, geom)[0])
    return KneeSurfaces(bone=bone, cartilage=cartilage, side=side, mirrored=side == "left",
                        mirror_centre_x=cx, clip_z_mm=z_cut)


def unmirror(knee: KneeSurfaces, points: np.ndarray) -> np.ndarray:
    """Map points of the fitting frame back to the label map's frame (identity for right)."""
    return mirror_x(points, knee.mirror_centre_x) if knee.mirrored else points


def fitting_vertices(knee: KneeSurfaces, surface: Surface) -> np.ndarray:
    """Vertices of ``surface`` in the fitting frame (mirrored for a left knee)."""
    return unmirror(knee, surface.vertices)

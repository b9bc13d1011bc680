"""Phantom femurs with controlled shape, for the demo shape model and its tests.

The phantom generator (:mod:`pipeline.phantom`) draws one femur shape up to scale. A shape model
needs a population, so this module varies the phantom's own anatomy fields (condyle radius, width
and spacing, trochlea radius, shaft radius) around their defaults with ``dataclasses.replace`` and
classifies points with the phantom's exact geometry (:func:`pipeline.phantom.geometry.classify`);
the phantom code itself is unchanged.

``oa`` in [0, 1] is a synthetic "osteoarthritic" direction: wider, more widely spaced and flatter
condyles with a smaller trochlea (what osteophytes and flattening do to a distal femur). The demo
BScore vector is learned from it, so a higher ``oa`` must give a higher BScore.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipeline.phantom import geometry as g
from pipeline.phantom.pose import ImageGrid, KneePose, orientation_direction
from pipeline.phantom.truth import labels_from_material
from pipeline.shape.surfaces import Geometry


@dataclass(frozen=True)
class FemurShape:
    """Relative shape factors of a phantom femur (1.0 = the phantom's default)."""

    oa: float = 0.0
    condyle_r: float = 1.0
    condyle_half: float = 1.0
    condyle_m: float = 1.0
    trochlea_r: float = 1.0
    shaft_r: float = 1.0
    medial_bulge: float = 0.12

    @classmethod
    def random(cls, rng: np.random.Generator, oa: float | None = None) -> FemurShape:
        """A random healthy-to-OA shape (factors +-6 %, ``oa`` uniform unless given)."""
        f = np.clip(rng.normal(1.0, 0.04, 5), 0.9, 1.1)
        return cls(oa=float(rng.uniform(0.0, 1.0) if oa is None else oa), condyle_r=float(f[0]),
                   condyle_half=float(f[1]), condyle_m=float(f[2]), trochlea_r=float(f[3]),
                   shaft_r=float(f[4]), medial_bulge=float(rng.uniform(0.08, 0.16)))


def medial_warp(local: np.ndarray, anatomy: g.Anatomy, bulge: float) -> np.ndarray:
    """Query points warped so the MEDIAL condyle comes out ``1 + bulge`` times larger.

    The phantom's femur is mirror-symmetric (medial = lateral); real femurs are not, and left/right
    handling can only be tested on an asymmetric bone. Dividing (ap, si) by a factor that rises
    smoothly from 1 at m <= 0 to ``1 + bulge`` at the medial condyle centre enlarges everything
    medial about the condyle axis (the origin of the knee-local frame).
    """
    t = np.clip(local[:, 0] / anatomy.condyle_m, 0.0, 1.0)
    k = 1.0 + bulge * t * t * (3.0 - 2.0 * t)
    out = np.array(local, dtype=np.float32, copy=True)
    out[:, 1] /= k
    out[:, 2] /= k
    return out


def femur_anatomy(shape: FemurShape, scale: float,
                  thickness: dict[str, float] | None = None) -> g.Anatomy:
    """The phantom anatomy at ``scale`` with the femur reshaped by ``shape``."""
    base = g.build_anatomy(scale, thickness or g.DEFAULT_THICKNESS_MM)
    oa = shape.oa
    return replace(
        base,
        condyle_r=base.condyle_r * shape.condyle_r * (1.0 - 0.10 * oa),
        condyle_half=base.condyle_half * shape.condyle_half * (1.0 + 0.30 * oa),
        condyle_m=base.condyle_m * shape.condyle_m * (1.0 + 0.12 * oa),
        condyle_round=base.condyle_round * (1.0 + 0.5 * oa),
        trochlea_r=base.trochlea_r * shape.trochlea_r * (1.0 - 0.08 * oa),
        femur_shaft_r=base.femur_shaft_r * shape.shaft_r,
    )


def canonical_label_map(anatomy: g.Anatomy, spacing_mm: float,
                        bulge: float = 0.12) -> tuple[np.ndarray, Geometry]:
    """Label map of a RIGHT knee in an axis-aligned LPS grid around the distal femur.

    Right knee: knee-local (medial, anterior, superior) = LPS (+x, -y, +z). Covers the femur up to
    1.2 x its width above the condyle axes so the clipping rule, not the grid, cuts the shaft.
    """
    s = anatomy.scale
    half_m = anatomy.condyle_m + anatomy.condyle_half + 4.0
    width = 2.0 * (anatomy.condyle_m + anatomy.condyle_half)
    lo = np.array([-half_m, -(max(anatomy.trochlea_c[0] + anatomy.trochlea_r, 23.0 * s) + 4.0),
                   -anatomy.condyle_r - 6.0])
    hi = np.array([half_m, (anatomy.condyle_r + 5.0) * (1.0 + bulge), 1.2 * width])
    lo[1:] *= 1.0 + bulge
    size = np.ceil((hi - lo) / spacing_mm).astype(int) + 1
    ii, jj, kk = (np.arange(n) for n in size)
    kg, jg, ig = np.meshgrid(kk, jj, ii, indexing="ij")
    lps = np.stack([lo[0] + ig * spacing_mm, lo[1] + jg * spacing_mm, lo[2] + kg * spacing_mm], -1)
    local = lps.reshape(-1, 3) * np.array([1.0, -1.0, 1.0])
    material = g.classify(anatomy, medial_warp(local, anatomy, bulge)).material
    labels = labels_from_material(material).reshape(kg.shape)
    geom = Geometry(spacing=(spacing_mm,) * 3, origin=tuple(float(v) for v in lo),  # type: ignore[arg-type]
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    return labels, geom


def posed_label_map(anatomy: g.Anatomy, *, side: str, rotation_deg: tuple[float, float, float],
                    size: tuple[int, int, int] = (64, 64, 48),
                    spacing: tuple[float, float, float] = (0.7, 0.7, 0.9),
                    orientation: str = "sagittal", bulge: float = 0.12) -> tuple[np.ndarray, Geometry]:
    """A phantom-like label map ``[k, j, i]`` of ``anatomy`` in a posed scanner grid.

    Mirrors what :func:`pipeline.phantom.make_phantom` does for the labels (same pose and grid
    conventions) without the image rendering, for a femur of our chosen shape.
    """
    s = anatomy.scale
    pose0 = KneePose(side=side, rotation_deg=rotation_deg, centre=(0.0, 0.0, 0.0))
    fov_local = np.array([0.0, 10.0 * s + 1.0, -5.0 * s])
    centre = -pose0.matrix @ fov_local
    pose = KneePose(side=side, rotation_deg=rotation_deg, centre=tuple(float(v) for v in centre))  # type: ignore[arg-type]
    grid = ImageGrid.centred(size, spacing, orientation_direction(orientation), np.zeros(3))
    a, b = pose.grid_to_local(grid)
    ni, nj, nk = size
    kg, jg, ig = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    ijk = np.stack([ig, jg, kg], -1).reshape(-1, 3).astype(np.float64)
    local = (ijk @ a.T + b).astype(np.float32)
    labels = labels_from_material(g.classify(anatomy, medial_warp(local, anatomy, bulge)).material)
    labels = labels.reshape(nk, nj, ni)
    geom = Geometry(spacing=grid.spacing, origin=grid.origin, direction=grid.direction)
    return labels, geom

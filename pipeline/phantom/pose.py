"""Scanner grid (orientation presets) and knee pose: knee-local frame <-> patient LPS <-> voxels.

Conventions (DICOM / ITK, patient LPS: +x left, +y posterior, +z superior):

- ``ImageGrid.direction`` is a 3x3 matrix whose COLUMNS are the LPS unit vectors of the index axes
  (i = column index along a row = ImageOrientationPatient[0:3], j = row index =
  ImageOrientationPatient[3:6], k = slice index = their cross product); this is SimpleITK's
  direction. Arrays are stored as ``[k, j, i]`` (SimpleITK's numpy order).
- Orientation presets (row direction, column direction): sagittal (+y, -z), coronal (+x, -z),
  axial (+x, +y); oblique = the sagittal preset rotated by 12-20 degrees about z and 8-15 degrees
  about y (seeded). Slices are numbered along the normal row x column.
- The knee-local frame (``m`` medial, ``ap`` anterior, ``si`` superior) maps to LPS by
  ``p = centre + R @ B @ q`` with ``B = diag(+1, -1, +1)`` for a RIGHT knee (medial = +x, towards
  the patient's left) and ``diag(-1, -1, +1)`` for a LEFT knee; ``R`` is the random pose rotation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ORIENTATIONS = ("sagittal", "coronal", "axial", "oblique")
SIDES = ("left", "right")


def rotation_xyz(deg: tuple[float, float, float]) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx for angles (degrees) about the LPS x, y and z axes."""
    ax, ay, az = np.radians(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def orientation_direction(orientation: str, oblique_deg: tuple[float, float] = (15.0, 10.0)) -> np.ndarray:
    """Direction matrix (columns: row dir, column dir, normal) of an orientation preset."""
    presets = {
        "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
        "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
        "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    }
    if orientation == "oblique":
        base = orientation_direction("sagittal")
        return rotation_xyz((0.0, oblique_deg[1], oblique_deg[0])) @ base
    if orientation not in presets:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    row, col = (np.array(v) for v in presets[orientation])
    return np.column_stack([row, col, np.cross(row, col)])


def apply_affine(x: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``x @ a.T + b`` for (N, 3) points, written per component (numpy's (N,3)@(3,3) is slow)."""
    out = np.empty(x.shape, dtype=np.result_type(x.dtype, np.float32))
    for r in range(3):
        out[:, r] = x[:, 0] * a[r, 0] + x[:, 1] * a[r, 1] + x[:, 2] * a[r, 2] + b[r]
    return out


@dataclass(frozen=True)
class ImageGrid:
    """Voxel grid in patient LPS: size (i, j, k), spacing (mm), origin (centre of voxel 0,0,0)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major, columns are the axis directions

    @property
    def matrix(self) -> np.ndarray:
        """Direction as a 3x3 array."""
        return np.array(self.direction, dtype=np.float64).reshape(3, 3)

    @classmethod
    def centred(
        cls, size: tuple[int, int, int], spacing: tuple[float, float, float],
        direction: np.ndarray, centre: np.ndarray,
    ) -> ImageGrid:
        """The grid of ``size`` x ``spacing`` whose centre is ``centre`` (LPS)."""
        half = (np.array(size) - 1) / 2.0 * np.array(spacing)
        origin = np.asarray(centre, dtype=np.float64) - direction @ half
        return cls(
            size=tuple(int(v) for v in size),  # type: ignore[arg-type]
            spacing=tuple(float(v) for v in spacing),  # type: ignore[arg-type]
            origin=tuple(float(v) for v in origin),  # type: ignore[arg-type]
            direction=tuple(float(v) for v in direction.reshape(-1)),
        )

    @property
    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(A, b) with LPS = A @ (i, j, k) + b."""
        return self.matrix * np.array(self.spacing)[None, :], np.asarray(self.origin, dtype=np.float64)

    def index_to_lps(self, idx: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) indices (N, 3) -> LPS points (N, 3)."""
        a, b = self.affine
        return apply_affine(np.asarray(idx, dtype=np.float64), a, b)

    def slice_positions(self) -> list[tuple[float, float, float]]:
        """ImagePositionPatient of every slice k = 0..nk-1."""
        normal = self.matrix[:, 2] * self.spacing[2]
        o = np.asarray(self.origin)
        return [tuple(float(v) for v in o + k * normal) for k in range(self.size[2])]  # type: ignore[misc]


@dataclass(frozen=True)
class KneePose:
    """Rigid placement of the knee-local frame in LPS (rotation may include the side mirror)."""

    side: str
    rotation_deg: tuple[float, float, float]
    centre: tuple[float, float, float]  # LPS position of the knee-local origin

    @property
    def matrix(self) -> np.ndarray:
        """Local -> LPS linear part: R @ B (an isometry; det -1 for a right knee)."""
        b = np.diag([1.0 if self.side == "right" else -1.0, -1.0, 1.0])
        return rotation_xyz(self.rotation_deg) @ b

    def to_local(self, lps: np.ndarray) -> np.ndarray:
        """LPS points (N, 3) -> knee-local points (N, 3)."""
        m = self.matrix
        return apply_affine(np.asarray(lps), m.T, -m.T @ np.asarray(self.centre))

    def grid_to_local(self, grid: ImageGrid) -> tuple[np.ndarray, np.ndarray]:
        """(A, b) with knee-local = A @ (i, j, k) + b for voxel indices of ``grid``."""
        ga, gb = grid.affine
        m = self.matrix
        return m.T @ ga, m.T @ (gb - np.asarray(self.centre))

    def to_lps(self, local: np.ndarray) -> np.ndarray:
        """Knee-local points (N, 3) -> LPS points (N, 3)."""
        return np.asarray(local) @ self.matrix.T + np.asarray(self.centre)

"""Reorient a volume to a model's orientation and back, by axis permutation and flips only.

Why not resample: a model trained on sagittal volumes wants its axes in a fixed order and sense;
bringing any input there by permuting and flipping array axes is exact (no interpolation), so the
label map predicted in model orientation maps back voxel for voxel onto the source grid.

Orientation codes name, per index axis i, j, k, the patient direction the index INCREASES towards
(DICOM/ITK convention, ``"LPS"`` = identity direction): L/R = +x/-x, P/A = +y/-y, S/I = +z/-z.
For an oblique input the nearest code is used (each index axis goes to the patient axis it is most
aligned with).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np
import SimpleITK as sitk

from pipeline.series.frames import invalid

_LETTERS = {"L": (0, 1.0), "R": (0, -1.0), "P": (1, 1.0), "A": (1, -1.0), "S": (2, 1.0), "I": (2, -1.0)}


def code_matrix(code: str) -> np.ndarray:
    """Direction matrix (columns = index axes in LPS) of an orientation code such as ``"RAS"``."""
    code = code.upper()
    if len(code) != 3 or any(c not in _LETTERS for c in code) or len({_LETTERS[c][0] for c in code}) != 3:
        raise invalid(f"orientation code {code!r} is not three of L/R, P/A, S/I on distinct axes")
    m = np.zeros((3, 3))
    for col, c in enumerate(code):
        axis, sign = _LETTERS[c]
        m[axis, col] = sign
    return m


def orientation_code(direction: np.ndarray | tuple[float, ...]) -> str:
    """The nearest orientation code of a direction matrix (SimpleITK row-major or 3x3)."""
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    names = (("L", "R"), ("P", "A"), ("S", "I"))
    out = ""
    for col in range(3):
        axis = int(np.argmax(np.abs(d[:, col])))
        out += names[axis][0 if d[axis, col] > 0 else 1]
    return out


@dataclass(frozen=True)
class Reorientation:
    """How a source grid maps to the target orientation; undo restores the source exactly.

    ``perm[t]`` is the source index axis that becomes target axis ``t`` (i, j, k numbering) and
    ``flip[t]`` whether it is reversed.
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    source_size: tuple[int, int, int]
    source_origin: tuple[float, float, float]
    source_spacing: tuple[float, float, float]
    source_direction: tuple[float, ...]

    @property
    def is_identity(self) -> bool:
        """True when nothing moves."""
        return self.perm == (0, 1, 2) and not any(self.flip)

    def to_target_array(self, arr: np.ndarray) -> np.ndarray:
        """A source ``[k, j, i]`` array in target order (a view when possible)."""
        out = np.transpose(arr, [2 - self.perm[2 - n] for n in range(3)])
        for t in range(3):
            if self.flip[t]:
                out = np.flip(out, axis=2 - t)
        return out

    def to_source_array(self, arr: np.ndarray) -> np.ndarray:
        """A target-order ``[k, j, i]`` array back in source order (exact inverse)."""
        out = arr
        for t in range(3):
            if self.flip[t]:
                out = np.flip(out, axis=2 - t)
        inverse = np.argsort([2 - self.perm[2 - n] for n in range(3)])
        return np.transpose(out, inverse)

    def apply(self, image: sitk.Image) -> sitk.Image:
        """The image in target orientation (same voxels, permuted/flipped; geometry adjusted)."""
        arr = sitk.GetArrayViewFromImage(image)
        out = sitk.GetImageFromArray(np.ascontiguousarray(self.to_target_array(arr)),
                                     isVector=image.GetNumberOfComponentsPerPixel() > 1)
        d = np.array(self.source_direction).reshape(3, 3)
        size = self.source_size
        corner = [size[self.perm[t]] - 1 if self.flip[t] else 0 for t in range(3)]
        start = [0, 0, 0]
        for t in range(3):
            start[self.perm[t]] = corner[t]
        origin = image.TransformIndexToPhysicalPoint(start)
        cols = [d[:, self.perm[t]] * (-1.0 if self.flip[t] else 1.0) for t in range(3)]
        out.SetOrigin(origin)
        out.SetSpacing([self.source_spacing[self.perm[t]] for t in range(3)])
        out.SetDirection(tuple(float(v) for v in np.column_stack(cols).reshape(-1)))
        return out

    def undo(self, image: sitk.Image) -> sitk.Image:
        """An image in target orientation (e.g. a label map) back on the source grid, exactly."""
        arr = sitk.GetArrayViewFromImage(image)
        out = sitk.GetImageFromArray(np.ascontiguousarray(self.to_source_array(arr)),
                                     isVector=image.GetNumberOfComponentsPerPixel() > 1)
        if out.GetSize() != self.source_size:
            raise invalid(f"image of size {out.GetSize()} does not come from a source of size "
                          f"{self.source_size}")
        out.SetOrigin(self.source_origin)
        out.SetSpacing(self.source_spacing)
        out.SetDirection(self.source_direction)
        return out


def plan_reorientation(image: sitk.Image, target: str | sitk.Image | np.ndarray) -> Reorientation:
    """How to bring ``image`` to ``target`` (a code like ``"LPS"``/``"RAS"``, a reference image or a
    direction matrix): the axis permutation maximising the alignment, then flips."""
    if isinstance(target, str):
        t = code_matrix(target)
    elif isinstance(target, sitk.Image):
        t = np.array(target.GetDirection()).reshape(3, 3)
    else:
        t = np.asarray(target, dtype=np.float64).reshape(3, 3)
    d = np.array(image.GetDirection()).reshape(3, 3)
    dots = t.T @ d  # dots[t, s] = target axis t . source axis s
    best = max(permutations(range(3)), key=lambda p: sum(abs(dots[a, p[a]]) for a in range(3)))
    flips = tuple(bool(dots[a, best[a]] < 0) for a in range(3))
    return Reorientation(
        perm=best,  # type: ignore[arg-type]
        flip=flips,  # type: ignore[arg-type]
        source_size=image.GetSize(),
        source_origin=image.GetOrigin(),
        source_spacing=image.GetSpacing(),
        source_direction=image.GetDirection(),
    )


def reorient(image: sitk.Image, target: str | sitk.Image | np.ndarray) -> tuple[sitk.Image, Reorientation]:
    """``image`` in the target orientation and the :class:`Reorientation` that undoes it."""
    plan = plan_reorientation(image, target)
    return plan.apply(image), plan

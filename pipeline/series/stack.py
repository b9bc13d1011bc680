"""Frames -> validated stacks: echo grouping, sorting along the normal, geometry checks.

Why so strict: a volume with a missing or duplicated slice, uneven spacing or mixed orientations
still "loads" in most tools, and every measurement made on it is silently wrong. Each problem is
reported as INVALID_FORMAT with the numbers that show it. Why not stricter: scanners round Image
Position (GE: to 0.1 mm) and jitter the slice gaps a little, so small deviations within the
:class:`~kneenode.settings.ReaderSettings` tolerances are accepted, resampled onto a uniform grid
and reported as a warning. Geometry comes only from ImagePositionPatient / ImageOrientationPatient;
SpacingBetweenSlices and SliceThickness are never used (scanners fill them inconsistently).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from kneenode.settings import ReaderSettings
from pipeline.series.frames import Frame, invalid


@dataclass(frozen=True)
class Stack:
    """Frames of one echo sorted along the slice normal, with the volume geometry."""

    frames: tuple[Frame, ...]
    echo_time: float | None
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]  # (columns i, rows j, slices k)
    direction: tuple[float, ...]  # row-major 3x3, columns = i, j, k directions (SimpleITK)
    offsets: tuple[float, ...] | None = None  # slice distances from the first (mm); None: uniform
    warning: str | None = None  # why the stack is resampled onto the uniform grid


def _where(fr: Frame) -> str:
    return fr.ref.path.name + (f" frame {fr.ref.frame}" if fr.ref.frame else "")


def check_common(frames: Sequence[Frame], limits: ReaderSettings) -> None:
    """Matrix size, orientation and pixel spacing must be the same for every frame."""
    sizes = {(f.rows, f.columns) for f in frames}
    if len(sizes) > 1:
        raise invalid(f"mixed matrix sizes in one series: {sorted(sizes)}")
    rows, cols = sizes.pop()
    if rows < limits.min_matrix or cols < limits.min_matrix:
        raise invalid(f"image too small: {rows}x{cols} pixels (need at least "
                      f"{limits.min_matrix}x{limits.min_matrix})")
    ref = np.array(frames[0].orientation)
    for f in frames[1:]:
        if np.max(np.abs(np.array(f.orientation) - ref)) > limits.orientation_tolerance:
            distinct = {tuple(round(v, 4) for v in fr.orientation) for fr in frames}
            raise invalid(f"mixed orientations: {len(distinct)} distinct ImageOrientationPatient "
                          f"values (e.g. {list(ref.round(4))} in {_where(frames[0])} and "
                          f"{list(np.round(f.orientation, 4))} in {_where(f)})")
    row, col = ref[:3], ref[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise invalid(f"ImageOrientationPatient {list(ref)} is not two orthonormal vectors")
    spacings = {tuple(round(v, 5) for v in f.pixel_spacing) for f in frames}
    if len(spacings) > 1:
        raise invalid(f"mixed pixel spacings in one series: {sorted(spacings)}")
    if min(frames[0].pixel_spacing) <= 0:
        raise invalid(f"PixelSpacing {frames[0].pixel_spacing} is not positive")


def group_by_echo(frames: Sequence[Frame], limits: ReaderSettings) -> list[list[Frame]]:
    """Frames grouped by echo: by EchoTime (rounded), and a group whose frames carry different
    EchoNumbers split by EchoNumbers (a vendor may write one EchoTime on both qDESS echoes).

    Groups are ordered by echo time, then echo number; frames without an echo time form one group.
    """
    if len({f.echo_time is not None for f in frames}) > 1:
        raise invalid("some frames have an EchoTime and others have none")
    by_te: dict[float, list[Frame]] = {}
    for f in frames:
        te = -1.0 if f.echo_time is None else round(f.echo_time, limits.echo_time_decimals)
        by_te.setdefault(te, []).append(f)
    out: list[list[Frame]] = []
    for te in sorted(by_te):
        by_number: dict[int, list[Frame]] = {}
        for f in by_te[te]:
            by_number.setdefault(f.echo_number or 0, []).append(f)
        out.extend(by_number[k] for k in sorted(by_number))
    return out


def build_stack(frames: Sequence[Frame], limits: ReaderSettings) -> Stack:
    """Sort one echo's frames along the normal and check the slice positions.

    Errors: 2-D input (one slice), too few slices, duplicate positions, slices off the common
    normal line, missing slices (a gap that is a multiple of the usual gap) and uneven spacing.
    Slices within the tolerances but off the uniform grid get ``offsets`` and a ``warning``
    (:func:`resample_uniform` then puts the pixels on the grid).
    """
    ori = np.array(frames[0].orientation)
    row, col = ori[:3], ori[3:]
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    te = frames[0].echo_time
    label = f" (echo time {te:g} ms)" if te is not None else ""
    if len(frames) == 1:
        raise invalid(f"2-D input: the series has a single slice{label}")
    pos = np.array([f.position for f in frames])
    dist = pos @ normal
    order = np.argsort(dist, kind="stable")
    dist, pos = dist[order], pos[order]
    sorted_frames = [frames[i] for i in order]
    gaps = np.diff(dist)
    ps = frames[0].pixel_spacing
    tiny = 1e-3 * min(ps)
    dup = np.flatnonzero(gaps < max(tiny, 1e-4))
    if dup.size:
        a, b = sorted_frames[dup[0]], sorted_frames[dup[0] + 1]
        raise invalid(f"duplicate slice position {dist[dup[0]]:.3f} mm along the normal{label}: "
                      f"{_where(a)} and {_where(b)} ({dup.size} duplicate(s) in all)")
    if len(frames) < limits.min_slices:
        raise invalid(f"too few slices: {len(frames)}{label} (need at least {limits.min_slices})")
    inplane = pos - np.outer(dist, normal)
    drift = np.linalg.norm(inplane - inplane[0], axis=1)
    if drift.max() > limits.inplane_tolerance_mm(min(ps)):
        k = int(np.argmax(drift))
        raise invalid(f"slices are not stacked along their normal: {_where(sorted_frames[k])} is "
                      f"shifted {drift[k]:.3f} mm in-plane from the first slice (tolerance "
                      f"{limits.inplane_tolerance_mm(min(ps)):.3f} mm){label}")
    median = float(np.median(gaps))
    _check_gaps(gaps, dist, median, sorted_frames, limits, label)
    step = float(dist[-1] - dist[0]) / (len(dist) - 1)  # the uniform grid keeps both end slices
    offsets = dist - dist[0]
    off_grid = np.abs(offsets - step * np.arange(len(dist)))
    resample = float(off_grid.max()) > limits.uniform_tolerance_mm
    warning = None
    if resample:
        k = int(np.argmax(off_grid))
        warning = (f"non-uniform slice spacing: gaps {gaps.min():.3f}-{gaps.max():.3f} mm "
                   f"(median {median:.3f} mm), slice {k + 1} of {len(dist)} lies "
                   f"{off_grid[k]:.3f} mm off a uniform grid; resampled onto a uniform "
                   f"{step:.4f} mm grid")
    direction = np.column_stack([row, col, normal])
    return Stack(
        frames=tuple(sorted_frames),
        echo_time=te,
        origin=tuple(float(v) for v in pos[0]),  # type: ignore[arg-type]
        spacing=(float(ps[1]), float(ps[0]), step),
        direction=tuple(float(v) for v in direction.reshape(-1)),
        offsets=tuple(float(v) for v in offsets) if resample else None,
        warning=warning,
    )


def _check_gaps(gaps: np.ndarray, dist: np.ndarray, median: float, frames: Sequence[Frame],
                limits: ReaderSettings, label: str) -> None:
    """Refuse a gap farther from the median than the tolerance: missing slices or uneven spacing.

    The message gives the gap's position (along the normal and by file), the expected and the
    found spacing.
    """
    tol = limits.gap_tolerance_mm(median)
    bad = np.flatnonzero(np.abs(gaps - median) > tol)
    if not bad.size:
        return
    i = int(bad[0])
    ratio = gaps[i] / median
    where = (f"between {dist[i]:.3f} and {dist[i + 1]:.3f} mm along the normal (after slice "
             f"{i + 1} of {len(dist)}, {_where(frames[i])})")
    if abs(ratio - round(ratio)) * median <= tol and round(ratio) >= 2:
        missing = int(sum(round(gaps[j] / median) - 1 for j in bad if gaps[j] > median))
        raise invalid(f"missing slices: gap of {gaps[i]:.3f} mm {where}, expected {median:.3f} mm "
                      f"({missing} slice(s) missing){label}")
    raise invalid(f"uneven slice spacing: gap of {gaps[i]:.3f} mm {where}, expected {median:.3f} "
                  f"mm +- {tol:.3f} mm{label}")


def resample_uniform(arr: np.ndarray, stack: Stack) -> np.ndarray:
    """The stack's pixels ``[k, rows, columns]`` linearly interpolated along the normal onto its
    uniform grid (slice k at ``k * spacing`` from the first); unchanged when already uniform.

    Why linear along the normal only: the slices are parallel (checked) and off the grid by at
    most the gap tolerance, so each grid slice lies between two measured neighbours.
    """
    if stack.offsets is None:
        return arr
    src = np.asarray(stack.offsets)
    target = stack.spacing[2] * np.arange(len(src))
    j = np.clip(np.searchsorted(src, target, side="right") - 1, 0, len(src) - 2)
    w = np.clip((target - src[j]) / (src[j + 1] - src[j]), 0.0, 1.0).astype(np.float32)
    out = arr[j] * (1 - w)[:, None, None]
    out += arr[j + 1] * w[:, None, None]
    return out


def check_echoes_match(stacks: Sequence[Stack]) -> None:
    """Every echo must sample the same slices (same count and positions)."""
    first = stacks[0]
    for s in stacks[1:]:
        if len(s.frames) != len(first.frames):
            raise invalid(f"echo groups differ: {len(first.frames)} slices at echo time "
                          f"{first.echo_time:g} ms but {len(s.frames)} at {s.echo_time:g} ms")
        a = np.array([f.position for f in first.frames])
        b = np.array([f.position for f in s.frames])
        if np.max(np.abs(a - b)) > 1e-3 * min(first.spacing):
            raise invalid(f"echo groups differ: slice positions at echo time {s.echo_time:g} ms do "
                          f"not match those at {first.echo_time:g} ms")

"""Antialiasing before nnU-Net's downsampling of a series finer than the model's grid.

nnU-Net resamples the image to the plans' spacing with a cubic spline and no low-pass filter, so a
series finer than the model's grid (the full phantom preset: 0.365 mm in-plane into 0.7 mm) keeps
its fine-grid sharpness and aliases: measured on the demo cascade, thin cartilage came out 11 %
too small (Dice 0.92-0.93). A Gaussian of sigma ``k * sqrt(target^2 - spacing^2)`` per finer
axis brings the series' resolution towards the model's before that downsampling (k = 0.5: the
best of 0.17-0.6 mm measured on the full preset; docs/segmentation.md). Axes at or coarser than
the model's spacing are left alone, so a series on the model's grid passes through unchanged.

A model asks for it in its card (``"antialias": true``) because it must have been trained on the
same filtered input (:func:`pipeline.segment.train_demo.preprocess_case` applies it too).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

#: Fraction of the resolution difference the filter makes up (see the module docstring).
STRENGTH = 0.5


def antialias_sigmas_mm(spacing: Sequence[float], target: Sequence[float],
                        strength: float = STRENGTH) -> tuple[float, ...]:
    """Gaussian sigma (mm) per axis: zero where the input is not finer than ``target``."""
    return tuple(strength * float(np.sqrt(max(0.0, t * t - s * s)))
                 for s, t in zip(spacing, target, strict=True))


def antialias(image: np.ndarray, spacing: Sequence[float], target: Sequence[float],
              strength: float = STRENGTH) -> np.ndarray:
    """``image`` low-pass filtered for resampling from ``spacing`` to ``target`` (same axes).

    Returns the input itself (not a copy) when no axis is finer than the target.
    """
    sigmas = antialias_sigmas_mm(spacing, target, strength)
    if not any(sigmas):
        return image
    voxels = [s / float(v) for s, v in zip(sigmas, spacing, strict=True)]
    return gaussian_filter(np.asarray(image, dtype=np.float32), voxels, mode="nearest")


def target_spacing_in_input_axes(spacing_transposed: Sequence[float],
                                 transpose_forward: Sequence[int]) -> tuple[float, ...]:
    """The plans' spacing (given in nnU-Net's transposed axes) in the input array's axes."""
    out = [0.0] * len(transpose_forward)
    for j, axis in enumerate(transpose_forward):
        out[axis] = float(spacing_transposed[j])
    return tuple(out)

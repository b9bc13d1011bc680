"""Plausibility and confidence checks of a canonical knee label map: pure functions -> reasons.

Why these checks: a model given an input it was not made for (noise, another body part, a cut
field of view, another contrast) still returns labels, and every later number looks valid. What
stays true of any real knee segmentation is checked instead: every structure is there, is one
piece, lies where anatomy puts it (cartilage on its bone, the menisci on the tibia), is not cut by
the image border, and has volumes in plausible proportion. The model's own softmax adds what the
labels cannot show: how sure it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import QcSettings
from pipeline.labels import TISSUE_NAMES
from pipeline.qc.record import QcReason, StructureQc
from pipeline.segment.softmax import fraction_below

BONES = (1, 2, 3)
#: Structure -> the bone it lies on (reported by name).
SUPPORT: dict[int, int] = {4: 1, 5: 2, 6: 2, 7: 3, 8: 2, 9: 2}
#: Structure -> labels it may rest on: a meniscus sits on the tibial plateau and its cartilage.
RESTS_ON: dict[int, tuple[int, ...]] = {4: (1,), 5: (2,), 6: (2,), 7: (3,), 8: (2, 5, 6),
                                        9: (2, 5, 6)}
_BY_NAME = {name: label for label, name in TISSUE_NAMES.items()}
_FULL = ndimage.generate_binary_structure(3, 3)


def check_ratio_names(ratios: dict[str, Any]) -> None:
    """CONFIG_ERROR when ``qc.ratios`` names a structure that does not exist."""
    for key in ratios:
        unknown = [p for p in key.split("/") if p.strip() not in _BY_NAME]
        if unknown:
            raise NodeError(ErrorCode.CONFIG_ERROR, f"qc.ratios '{key}' names unknown "
                            f"structure(s) {unknown}", hint=f"use {sorted(_BY_NAME)}")


def _main_fraction(mask: np.ndarray) -> float:
    labelled, n = ndimage.label(mask, structure=_FULL)
    if n <= 1:
        return 1.0
    sizes = np.bincount(labelled.ravel())[1:]
    return float(sizes.max() / sizes.sum())


def _border_fraction(mask: np.ndarray) -> float:
    total = int(mask.sum())
    if total == 0:
        return 0.0
    edge = np.zeros_like(mask)
    for axis in range(3):
        for index in (0, -1):
            sl = [slice(None)] * 3
            sl[axis] = index  # type: ignore[call-overload]
            edge[tuple(sl)] = True
    return float((mask & edge).sum() / total)


def _on_bone_fraction(mask: np.ndarray, bone: np.ndarray, spacing: Sequence[float],
                      distance_mm: float) -> float | None:
    """Share of ``mask`` voxels within ``distance_mm`` of ``bone`` (None when no bone)."""
    if not bone.any():
        return None
    margin = [int(np.ceil(distance_mm / s)) + 1 for s in spacing]
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    box = tuple(slice(max(0, b.start - m), min(n, b.stop + m))
                for b, m, n in zip(box, margin, mask.shape))
    sub_bone = bone[box]
    if not sub_bone.any():
        return 0.0
    dist = ndimage.distance_transform_edt(~sub_bone, sampling=spacing)
    return float((dist[mask[box]] <= distance_mm).mean())


def structure_metrics(labels: np.ndarray, spacing: Sequence[float],
                      settings: QcSettings) -> dict[int, StructureQc]:
    """Volume, main-component share, on-bone share and border share of every structure.

    ``labels`` in any axis order with ``spacing`` (mm) in the same order.
    """
    voxel = float(np.prod(spacing))
    counts = np.bincount(labels.ravel(), minlength=10)
    out: dict[int, StructureQc] = {}
    for label in TISSUE_NAMES:
        n = int(counts[label])
        m = StructureQc(volume_mm3=round(n * voxel, 2))
        if n:
            mask = labels == label
            m.main_component_fraction = round(_main_fraction(mask), 4)
            if label in SUPPORT:
                frac = _on_bone_fraction(mask, np.isin(labels, RESTS_ON[label]), spacing,
                                         settings.on_bone_distance_mm)
                m.on_bone_fraction = None if frac is None else round(frac, 4)
                m.border_fraction = round(_border_fraction(mask), 4)
        out[label] = m
    return out


def plausibility_reasons(metrics: dict[int, StructureQc], settings: QcSettings
                         ) -> tuple[list[QcReason], dict[str, float | None]]:
    """Reasons from the label metrics, and the configured volume ratios."""
    reasons: list[QcReason] = []
    for label, m in metrics.items():
        name = TISSUE_NAMES[label]
        if m.volume_mm3 < settings.min_volume_mm3:
            reasons.append(QcReason(
                check="present", severity="fail", structure=name, value=m.volume_mm3,
                limit=settings.min_volume_mm3,
                message=f"{name} missing ({m.volume_mm3:.0f} mm3)"))
            continue
        main = m.main_component_fraction
        limit = settings.min_main_component if label in BONES else settings.min_main_component_soft
        if main is not None and main < limit:
            reasons.append(QcReason(
                check="components", severity="fail" if label in BONES else "warn",
                structure=name, value=main, limit=limit,
                message=f"{name} in pieces (largest {100 * main:.0f} %)"))
        on = m.on_bone_fraction
        if label in SUPPORT and on is not None and on < settings.min_on_bone:
            bone = TISSUE_NAMES[SUPPORT[label]]
            reasons.append(QcReason(
                check="on_bone", severity="fail", structure=name, value=on,
                limit=settings.min_on_bone,
                message=f"{name} not on the {bone} ({100 * on:.0f} % within "
                f"{settings.on_bone_distance_mm:g} mm)"))
        border = m.border_fraction
        if border is not None and border > settings.max_border:
            reasons.append(QcReason(
                check="border", severity="fail", structure=name, value=border,
                limit=settings.max_border,
                message=f"{name} cut by the field of view ({100 * border:.0f} % on the border)"))
    ratios: dict[str, float | None] = {}
    for key, (low, high) in settings.ratios.items():
        a, b = (_BY_NAME[p.strip()] for p in key.split("/"))
        va, vb = metrics[a].volume_mm3, metrics[b].volume_mm3
        if va < settings.min_volume_mm3 or vb < settings.min_volume_mm3:
            ratios[key] = None  # already failed as missing
            continue
        r = va / vb
        ratios[key] = round(r, 4)
        if not low <= r <= high:
            reasons.append(QcReason(
                check="ratio", severity="fail", structure=key, value=round(r, 4),
                limit=low if r < low else high,
                message=f"volume {key} = {r:.3g} outside [{low:g}, {high:g}]"))
    return reasons, ratios


def confidence_reasons(summary: dict[str, Any] | None, metrics: dict[int, StructureQc],
                       settings: QcSettings) -> tuple[list[QcReason], float | None]:
    """Reasons from the softmax summary (:mod:`pipeline.segment.softmax`); fills ``metrics``.

    Returns the reasons and the mean winning probability over all foreground voxels.
    """
    if not summary:
        return [], None
    reasons: list[QcReason] = []
    total = weighted = 0.0
    for label, name in TISSUE_NAMES.items():
        s = summary.get("structures", {}).get(name) or {}
        n, mean = int(s.get("voxels") or 0), s.get("mean")
        if not n or mean is None:
            continue
        total += n
        weighted += n * float(mean)
        unsure = fraction_below(s.get("histogram") or [], settings.uncertain_probability)
        metrics[label].mean_confidence = round(float(mean), 4)
        metrics[label].uncertain_fraction = None if unsure is None else round(unsure, 4)
        if unsure is not None and unsure > settings.warn_uncertain:
            bad = unsure > settings.fail_uncertain
            reasons.append(QcReason(
                check="uncertain", severity="fail" if bad else "warn", structure=name,
                value=round(unsure, 4),
                limit=settings.fail_uncertain if bad else settings.warn_uncertain,
                message=f"{name}: model unsure on {100 * unsure:.0f} % of its voxels"))
    if not total:
        return reasons, None
    overall = weighted / total
    if overall < settings.warn_mean_confidence:
        bad = overall < settings.fail_mean_confidence
        reasons.append(QcReason(
            check="confidence", severity="fail" if bad else "warn", value=round(overall, 4),
            limit=settings.fail_mean_confidence if bad else settings.warn_mean_confidence,
            message=f"mean model confidence {100 * overall:.0f} %"))
    return reasons, round(overall, 4)

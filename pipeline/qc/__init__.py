"""Segmentation QC: is this label map a knee segmentation a reader can trust?

Typical use::

    from pipeline.qc import evaluate_qc
    record = evaluate_qc(labels_array, spacing, settings.qc, confidence=segmentation["confidence"])
    record.outcome   # "pass" | "warn" | "fail", record.reasons explain it

Pure functions over the canonical label map and the softmax summary of the segment stage
(:mod:`pipeline.segment.softmax`); what a failed outcome does to delivery is the jobs layer's
business (``qc.on_fail``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kneenode.settings import QcSettings
from pipeline.labels import TISSUE_NAMES
from pipeline.qc.checks import (
    check_ratio_names,
    confidence_reasons,
    plausibility_reasons,
    structure_metrics,
)
from pipeline.qc.record import QC_VERSION, QcReason, QcRecord, StructureQc, outcome_of

__all__ = ["QC_VERSION", "QcReason", "QcRecord", "StructureQc", "evaluate_qc"]


def evaluate_qc(labels: np.ndarray, spacing: Sequence[float], settings: QcSettings, *,
                confidence: dict[str, Any] | None = None) -> QcRecord:
    """QC of one canonical label map (``spacing`` in mm, in the array's axis order).

    ``confidence`` is the segment stage's softmax summary; without it (labels from elsewhere)
    only the plausibility checks run and ``confidence_available`` is False.
    """
    check_ratio_names(settings.ratios)
    labels = np.asarray(labels)
    metrics = structure_metrics(labels, spacing, settings)
    reasons, ratios = plausibility_reasons(metrics, settings)
    more, overall = confidence_reasons(confidence, metrics, settings)
    reasons += more
    return QcRecord(
        outcome=outcome_of(reasons), reasons=reasons,
        structures={TISSUE_NAMES[k]: v for k, v in metrics.items()}, ratios=ratios,
        mean_foreground_confidence=overall, confidence_available=bool(confidence),
    )

"""The typed record of one exam in the history (:class:`ExamRecord`) and the model key."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cache
from typing import Any


@cache
def measurement_keys() -> tuple[str, ...]:
    """The flat measurement keys of results.json kept per exam in the measurements table: the
    research table's columns (``pipeline.results.CSV_COLUMNS``) after the identifying ones.

    Imported on first use: ``pipeline.results`` pulls in the QC and segmentation modules, which
    the CLI's history commands do not otherwise need.
    """
    from pipeline.results import CSV_COLUMNS

    return tuple(c for c in CSV_COLUMNS if c not in ("study_uid", "series_uid", "side"))


def model_checksum(card: Mapping[str, Any]) -> str:
    """One checksum for a model card's ``checkpoint_sha256`` (the only one, or a SHA-256 over
    the sorted list for an ensemble of folds); empty when the card has none."""
    sums = card.get("checkpoint_sha256") or []
    if isinstance(sums, Mapping):  # the job snapshot's form: fold -> sha256
        sums = list(sums.values())
    sums = sorted(str(s) for s in sums)
    if len(sums) == 1:
        return sums[0]
    return hashlib.sha256(",".join(sums).encode()).hexdigest() if sums else ""


def model_key(card: Mapping[str, Any] | None) -> str:
    """``<algorithm_name>@<algorithm_version>#<checksum[:16]>``: exams are only compared when
    their keys are equal (another version or other weights is another key)."""
    card = card or {}
    return (f"{card.get('algorithm_name', '')}@{card.get('algorithm_version', '')}"
            f"#{model_checksum(card)[:16]}")


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (JSON and PostgreSQL reject them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


@dataclass(frozen=True)
class ExamRecord:
    """One knee exam as the history keeps it: who (pseudonym), which knee, when, with which
    model, the QC outcome and the whole ``results.json`` document.

    Attributes
    ----------
    job_id, study_uid, series_uid, series_version
        The job that measured it and its source series (version: the spool version).
    pseudonym
        :func:`kneenode.history.pseudonym` of the header's Patient ID + Issuer.
    side
        ``left`` / ``right`` as quantify found it (the header's Laterality when it found none).
    study_date, acquisition_date
        From the header (Study Date; Acquisition Date or Date Time), None when absent.
    profile
        The job's processing profile.
    model_name, model_version, model_checksum
        The segmentation model card (``results.json`` ``model``); :attr:`model_key` joins them.
    qc_outcome, qc_decision
        ``pass`` / ``warn`` / ``fail`` (None: QC off); ``released`` when an operator let a
        failed result through review.
    laterality
        The header's Laterality / Image Laterality (``R``, ``L``) as sent, None when absent.
    results
        The job's validated results.json (non-finite numbers stored as null).
    recorded_at
        When it was recorded (UTC; set by the store).
    superseded_by
        The job that measured the same series with the same model later (None: current).
    """

    job_id: str
    study_uid: str
    series_uid: str
    pseudonym: str
    side: str | None
    study_date: date | None
    acquisition_date: date | None = None
    series_version: int = 1
    profile: str = "default"
    model_name: str = ""
    model_version: str = ""
    model_checksum: str = ""
    qc_outcome: str | None = None
    qc_decision: str | None = None
    laterality: str | None = None
    results: dict[str, Any] = field(default_factory=dict, compare=True)
    recorded_at: datetime | None = None
    superseded_by: str | None = None

    @property
    def model_key(self) -> str:
        """The comparable model identity (see :func:`model_key`)."""
        return (f"{self.model_name}@{self.model_version}#{self.model_checksum[:16]}")

    @property
    def measurements(self) -> dict[str, float]:
        """The non-null flat measurements of :attr:`results` (thickness, T2, volumes, BScore)."""
        return {k: float(v) for k in measurement_keys()
                if isinstance(v := self.results.get(k), int | float) and not isinstance(v, bool)}

    @property
    def exam_date(self) -> date | None:
        """The date the exam is ordered by: Study Date, else Acquisition Date."""
        return self.study_date or self.acquisition_date

"""Change since the last exam: per region, current minus the most recent usable prior.

Pure (no I/O): the compare stage hands in the current typed results, the current Study Date and
the priors it found (:class:`PriorExam`, adapted from the history's records), and writes the
returned :class:`~pipeline.change_report.ChangeReport` into ``results.json["change"]``.

Why the function checks what the caller already filtered: a comparison across the two knees of
a patient, or across model versions, gives a plausible-looking but meaningless "change". Every
prior must have the current exam's side and model identity (:func:`model_id`), and its own
results must agree with what the caller says of it; otherwise :class:`ChangeRefused` is raised
and nothing is reported. Definitions (docs/change.md): thickness = the region's mean thickness
(``<region>_mm_mean``), volume = the plate volume (``<tissue>_ml`` x 1000 mm^3); change =
current - prior; % = change / prior x 100; per year = / (days / 365.25); flagged = |change| >
the region's smallest detectable change (``change.sdc_mm`` in mm, ``change.sdc_volume_percent``
in % of the prior volume).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import ChangeSettings
from pipeline.change_report import (
    CHANGE_TISSUES,
    CHANGE_VERSION,
    ChangeReport,
    ChangeStatus,
    ExamRef,
    SkippedPrior,
    ThicknessChange,
    TrendPoint,
    VolumeChange,
)
from pipeline.quantify.results import THICKNESS_REGIONS
from pipeline.results import ModelInfo, ResultsBase

__all__ = [
    "CHANGE_VERSION",
    "VOLUME_TISSUES",
    "ChangeRefused",
    "ChangeReport",
    "ChangeSettings",
    "PriorExam",
    "compute_change",
    "model_id",
    "not_compared",
]

#: Cartilage plates whose volume change is reported (results key prefixes of ``<tissue>_ml``).
VOLUME_TISSUES = CHANGE_TISSUES
DAYS_PER_YEAR = 365.25


class ChangeRefused(NodeError, ValueError):
    """A prior that must never be compared with the current exam (other side, other model)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.PIPELINE_ERROR, message,
                         hint="Priors must be of the same knee side and measured by the same "
                         "model (re-process a prior measured by another model first).")


@dataclass(frozen=True)
class PriorExam:
    """An earlier exam of the knee as the compare stage found it (adapted from the history).

    ``model_id`` is what the history recorded; it must equal :func:`model_id` of the prior's own
    results and of the current results.
    """

    study_date: date
    results: ResultsBase
    model_id: str | None
    job_id: str | None = None


def model_id(model: ModelInfo | Mapping[str, Any] | None) -> str | None:
    """Identity of the model that measured an exam: name, version, configuration, checkpoints.

    Two exams are comparable only when this string is equal; the checkpoint hashes make a
    retrained model with an unchanged version string a different model.
    """
    if model is None:
        return None
    card = model.model_dump() if isinstance(model, ModelInfo) else dict(model)
    name, version = card.get("algorithm_name"), card.get("algorithm_version")
    if not name or not version:
        return None
    parts = [str(name), str(version), str(card.get("configuration") or "-")]
    sums = sorted(str(s) for s in card.get("checkpoint_sha256") or [])
    if sums:
        parts.append("sha256:" + hashlib.sha256("\n".join(sums).encode()).hexdigest()[:16])
    return " ".join(parts)


def _ref(results: ResultsBase, study_date: date, job_id: str | None) -> ExamRef:
    return ExamRef(study_date=study_date, job_id=job_id, study_uid=results.study_uid,
                   series_uid=results.series_uid)


def _value(results: ResultsBase, key: str) -> float | None:
    value = getattr(results, key, None)
    return None if value is None else float(value)


def _point(results: ResultsBase, study_date: date, job_id: str | None, current: bool) -> TrendPoint:
    vols = {t: _value(results, f"{t}_ml") for t in VOLUME_TISSUES}
    return TrendPoint(
        study_date=study_date, job_id=job_id, current=current,
        thickness_mm={r: _value(results, f"{r}_mm_mean") for r in THICKNESS_REGIONS},
        volume_mm3={t: None if v is None else round(v * 1000.0, 3) for t, v in vols.items()},
    )


def not_compared(current: ResultsBase, current_date: date, status: ChangeStatus, reason: str, *,
                 settings: ChangeSettings | None = None,
                 current_job_id: str | None = None) -> ChangeReport:
    """A report without a comparison (e.g. ``priors_unavailable`` when the PACS did not answer)."""
    if status == "compared":
        raise ValueError("not_compared() cannot report status 'compared'")
    opts = settings or ChangeSettings()
    return ChangeReport(
        status=status, reason=reason, side=current.side, model_id=model_id(current.model),
        current=_ref(current, current_date, current_job_id),
        min_interval_days=opts.min_interval_days,
        trend=[_point(current, current_date, current_job_id, True)],
    )


def _check_prior(prior: PriorExam, side: str | None, current_model: str | None) -> None:
    """Raise :class:`ChangeRefused` unless the prior is the same knee measured by the same model."""
    own = model_id(prior.results.model)
    what = f"prior {prior.job_id or '?'} of {prior.study_date.isoformat()}"
    if prior.results.side != side:
        raise ChangeRefused(f"{what} is a {prior.results.side or 'unknown-side'} knee; the "
                            f"current exam is {side or 'of unknown side'}: never compared")
    if prior.model_id != own:
        raise ChangeRefused(f"{what}: the model id given ({prior.model_id!r}) is not the one "
                            f"of its results ({own!r})")
    if own != current_model:
        raise ChangeRefused(f"{what} was measured by {own!r}, the current exam by "
                            f"{current_model!r}: re-process the prior with the current model")


def _usable(priors: Sequence[PriorExam], current_date: date, allow_failed_qc: bool
            ) -> tuple[list[PriorExam], list[SkippedPrior]]:
    keep, skipped = [], []
    for p in priors:
        qc = p.results.qc or {}
        if p.study_date > current_date:
            skipped.append(SkippedPrior(study_date=p.study_date, job_id=p.job_id,
                                        reason="later than the current exam"))
        elif qc.get("outcome") == "fail" and not allow_failed_qc:
            skipped.append(SkippedPrior(study_date=p.study_date, job_id=p.job_id,
                                        reason="its segmentation QC failed"))
        else:
            keep.append(p)
    return keep, skipped


def _rates(change: float, prior: float, years: float | None
           ) -> tuple[float | None, float | None, float | None]:
    """(% of prior, per year, % of prior per year); % is null for a zero prior, the rates for
    a zero interval (two exams of one day, with ``change.min_interval_days = 0``)."""
    pct = change / prior * 100.0 if prior else None
    if not years:
        return pct, None, None
    return pct, change / years, None if pct is None else pct / years


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _thickness(region: str, cur: ResultsBase, prior: ResultsBase, years: float | None, sdc: float
               ) -> ThicknessChange:
    key = f"{region}_mm_mean"
    a, b = _value(prior, key), _value(cur, key)
    if a is None or b is None:
        which = "current" if b is None else "prior"
        why = (cur if b is None else prior).missing.get(f"{region}_mm", "not measured")
        return ThicknessChange(region=region, prior_mm=a, current_mm=b, change_mm=None,
                               change_percent=None, change_mm_per_year=None,
                               change_percent_per_year=None, sdc_mm=sdc, flagged=False,
                               reason=f"{which} exam: {why}")
    change = b - a
    pct, per_year, pct_year = _rates(change, a, years)
    return ThicknessChange(region=region, prior_mm=a, current_mm=b, change_mm=round(change, 4),
                           change_percent=_r(pct, 3), change_mm_per_year=_r(per_year, 4),
                           change_percent_per_year=_r(pct_year, 3), sdc_mm=sdc,
                           flagged=abs(change) > sdc)


def _volume(tissue: str, cur: ResultsBase, prior: ResultsBase, years: float | None, sdc: float
            ) -> VolumeChange:
    a, b = _value(prior, f"{tissue}_ml"), _value(cur, f"{tissue}_ml")
    if a is None or b is None:
        return VolumeChange(tissue=tissue, prior_mm3=None if a is None else a * 1000.0,
                            current_mm3=None if b is None else b * 1000.0, change_mm3=None,
                            change_percent=None, change_mm3_per_year=None,
                            change_percent_per_year=None, sdc_percent=sdc, flagged=False,
                            reason=f"{'current' if b is None else 'prior'} exam: not measured")
    a, b = a * 1000.0, b * 1000.0
    change = b - a
    pct, per_year, pct_year = _rates(change, a, years)
    return VolumeChange(tissue=tissue, prior_mm3=round(a, 3), current_mm3=round(b, 3),
                        change_mm3=round(change, 3), change_percent=_r(pct, 3),
                        change_mm3_per_year=_r(per_year, 3),
                        change_percent_per_year=_r(pct_year, 3), sdc_percent=sdc,
                        flagged=pct is not None and abs(pct) > sdc)


def _check_settings(settings: ChangeSettings) -> None:
    unknown = (set(settings.sdc_mm) - set(THICKNESS_REGIONS)) | (
        set(settings.sdc_volume_percent) - set(VOLUME_TISSUES))
    if unknown:
        raise NodeError(ErrorCode.CONFIG_ERROR, f"change settings name unknown regions "
                        f"{sorted(unknown)}",
                        hint=f"change.sdc_mm keys: {list(THICKNESS_REGIONS)}; "
                        f"change.sdc_volume_percent keys: {list(VOLUME_TISSUES)}")


def compute_change(current: ResultsBase, current_date: date, priors: Sequence[PriorExam],
                   settings: ChangeSettings, *, current_job_id: str | None = None) -> ChangeReport:
    """The change of every region since the most recent usable prior.

    Parameters
    ----------
    current
        The current exam's typed results (``pipeline.results.Results``), after quantify.
    current_date
        Its Study Date.
    priors
        Earlier exams of the same knee measured by the same model, any order.
    settings
        The job's ``change`` settings (SDC per region, minimum interval, QC-failed priors).
    current_job_id
        Recorded in the report (the current exam's reference and trend point).

    Returns
    -------
    ChangeReport
        ``status == "compared"`` with a prior, else why not (no prior, interval too short, ...).

    Raises
    ------
    ChangeRefused
        A prior of the other knee (or of unknown side) or measured by another model.
    NodeError
        CONFIG_ERROR when the settings name an unknown region.
    """
    _check_settings(settings)
    side = current.side
    cur_model = model_id(current.model)
    if side is None:
        if priors:  # unknown side: a prior can never be shown to be the same knee
            raise ChangeRefused("the current exam's knee side is unknown: no prior can be "
                                "compared with it")
        return not_compared(current, current_date, "side_unknown",
                            "no comparison: the knee side of this exam is unknown",
                            settings=settings, current_job_id=current_job_id)
    for prior in priors:
        _check_prior(prior, side, cur_model)
    if cur_model is None or all(_value(current, f"{r}_mm_mean") is None for r in THICKNESS_REGIONS):
        why = "no model card" if cur_model is None else "no cartilage thickness"
        return not_compared(current, current_date, "not_measured",
                            f"no comparison: the current exam has {why}",
                            settings=settings, current_job_id=current_job_id)
    usable, skipped = _usable(priors, current_date, settings.use_failed_qc_priors)
    trend = sorted([*(_point(p.results, p.study_date, p.job_id, False) for p in usable),
                    _point(current, current_date, current_job_id, True)],
                   key=lambda t: (t.study_date, t.current, t.job_id or ""))
    base = {"side": side, "model_id": cur_model, "trend": trend,
            "current": _ref(current, current_date, current_job_id),
            "min_interval_days": settings.min_interval_days}
    far = [p for p in usable if (current_date - p.study_date).days >= settings.min_interval_days]
    for p in usable:
        if p not in far:
            skipped.append(SkippedPrior(study_date=p.study_date, job_id=p.job_id,
                                        reason=f"less than {settings.min_interval_days} days "
                                        "before the current exam"))
    if not far:
        status: ChangeStatus = "interval_too_short" if usable else "no_prior"
        reason = ("no comparison: no earlier exam of this knee measured by this model"
                  if not usable else f"no comparison: the only earlier exams are less than "
                  f"{settings.min_interval_days} days old")
        return ChangeReport(status=status, reason=reason, skipped=skipped, **base)
    prior = max(far, key=lambda p: (p.study_date, p.job_id or ""))
    days = (current_date - prior.study_date).days
    years = days / DAYS_PER_YEAR or None
    thickness = [_thickness(r, current, prior.results, years, settings.sdc_mm.get(r, 0.2))
                 for r in THICKNESS_REGIONS]
    volume = [_volume(t, current, prior.results, years, settings.sdc_volume_percent.get(t, 5.0))
              for t in VOLUME_TISSUES]
    flagged = [f"{t.region}_mm_mean" for t in thickness if t.flagged]
    flagged += [f"{v.tissue}_ml" for v in volume if v.flagged]
    reason = (f"compared with the exam of {prior.study_date.isoformat()} ({days} days earlier): "
              f"{len(flagged)} change(s) beyond the smallest detectable change")
    return ChangeReport(status="compared", reason=reason,
                        prior=_ref(prior.results, prior.study_date, prior.job_id),
                        interval_days=days, interval_years=round(days / DAYS_PER_YEAR, 4),
                        thickness=thickness, volume=volume, flagged=flagged,
                        skipped=skipped, **base)

"""The typed change report of one exam: what ``results.json["change"]`` holds.

Kept apart from :mod:`pipeline.change` (the computation) so that :mod:`pipeline.results` can embed
the report without importing the computation (which reads typed results itself).
Dates are calendar dates (the studies' Study Date); JSON writes them as ``YYYY-MM-DD``.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: Version of the change computation (raise it when a definition changes).
CHANGE_VERSION = "1.0"
#: Cartilage plates whose volume change is reported (results key prefixes of ``<tissue>_ml``).
CHANGE_TISSUES: tuple[str, ...] = ("fem_cart", "med_tib_cart", "lat_tib_cart", "pat_cart")

#: Why there is (or is not) a comparison. ``compared``: a prior was used; ``no_prior``: no earlier
#: exam of this knee measured by this model; ``interval_too_short``: only priors closer than
#: ``change.min_interval_days``; ``side_unknown``: the current knee side is unknown, so no prior
#: can be matched; ``not_measured``: the current exam has no thickness or no model card;
#: ``priors_unavailable``: the priors could not be fetched (set by the compare stage).
ChangeStatus = Literal["compared", "no_prior", "interval_too_short", "side_unknown",
                       "not_measured", "priors_unavailable"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExamRef(_Record):
    """One exam of the comparison."""

    study_date: date = Field(description="Study Date of the exam.")
    job_id: str | None = Field(default=None, description="Node job that measured it.")
    study_uid: str | None = Field(default=None, description="Study Instance UID.")
    series_uid: str | None = Field(default=None, description="Series Instance UID measured.")


class ThicknessChange(_Record):
    """Change of one region's mean cartilage thickness since the prior (current - prior)."""

    region: str = Field(description="Thickness region (results key prefix, e.g. med_wb_fem_cart).")
    prior_mm: float | None = Field(description="Prior mean thickness (mm).")
    current_mm: float | None = Field(description="Current mean thickness (mm).")
    change_mm: float | None = Field(description="Current - prior (mm); negative = loss.")
    change_percent: float | None = Field(description="Change in % of the prior value.")
    change_mm_per_year: float | None = Field(description="Change per year (mm/year).")
    change_percent_per_year: float | None = Field(description="Change per year (% of prior/year).")
    sdc_mm: float = Field(description="Smallest detectable change used (change.sdc_mm).")
    flagged: bool = Field(description="|change_mm| > sdc_mm.")
    reason: str | None = Field(default=None, description="Why the change is null.")


class VolumeChange(_Record):
    """Change of one cartilage plate's volume since the prior (current - prior)."""

    tissue: str = Field(description="Tissue (results key prefix, e.g. med_tib_cart).")
    prior_mm3: float | None = Field(description="Prior volume (mm^3).")
    current_mm3: float | None = Field(description="Current volume (mm^3).")
    change_mm3: float | None = Field(description="Current - prior (mm^3); negative = loss.")
    change_percent: float | None = Field(description="Change in % of the prior volume.")
    change_mm3_per_year: float | None = Field(description="Change per year (mm^3/year).")
    change_percent_per_year: float | None = Field(description="Change per year (% of prior/year).")
    sdc_percent: float = Field(description="Smallest detectable change used (% of the prior).")
    flagged: bool = Field(description="|change_percent| > sdc_percent.")
    reason: str | None = Field(default=None, description="Why the change is null.")


class TrendPoint(_Record):
    """One exam of the knee's history, for the trend charts (oldest first in the report)."""

    study_date: date = Field(description="Study Date.")
    job_id: str | None = Field(default=None, description="Node job that measured it.")
    current: bool = Field(default=False, description="Whether this is the current exam.")
    thickness_mm: dict[str, float | None] = Field(description="Mean thickness per region (mm).")
    volume_mm3: dict[str, float | None] = Field(description="Volume per cartilage plate (mm^3).")


class SkippedPrior(_Record):
    """A prior that was passed in and not used, and why."""

    study_date: date
    job_id: str | None = None
    reason: str


class ChangeReport(_Record):
    """Change since the most recent usable prior exam of the same knee, measured by the same model."""

    version: str = Field(default=CHANGE_VERSION, description="Version of the change computation.")
    status: ChangeStatus = Field(description="compared, or why there is no comparison.")
    reason: str = Field(description="One line for the reader: what was compared, or why not.")
    side: Literal["left", "right"] | None = Field(default=None, description="Knee side compared.")
    model_id: str | None = Field(default=None, description="Model identity both exams share.")
    current: ExamRef = Field(description="The current exam.")
    prior: ExamRef | None = Field(default=None, description="The prior used (the most recent).")
    interval_days: int | None = Field(default=None, description="Days from the prior to the current.")
    interval_years: float | None = Field(default=None, description="interval_days / 365.25.")
    min_interval_days: int = Field(default=0, description="change.min_interval_days used.")
    thickness: list[ThicknessChange] = Field(default_factory=list,
                                             description="Per thickness region.")
    volume: list[VolumeChange] = Field(default_factory=list, description="Per cartilage plate.")
    flagged: list[str] = Field(
        default_factory=list,
        description="Results keys whose change exceeds the SDC (<region>_mm_mean, <tissue>_ml).")
    trend: list[TrendPoint] = Field(default_factory=list,
                                    description="Every exam of the knee (oldest first), current included.")
    skipped: list[SkippedPrior] = Field(default_factory=list, description="Priors not used, and why.")

"""The typed QC record: outcome, reasons and the per-structure numbers they were judged on."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Outcome = Literal["pass", "warn", "fail"]
Severity = Literal["warn", "fail"]

#: Version of the record layout (``results.json["qc"]["version"]``).
QC_VERSION = 1


class QcReason(BaseModel):
    """One finding: which check, on what, how bad, and the number against its limit."""

    model_config = ConfigDict(extra="forbid")

    check: str = Field(description="Check id: present, components, on_bone, ratio, border, "
                       "confidence, uncertain.")
    severity: Severity
    structure: str = Field(default="", description="Structure (or ratio) name; empty = overall.")
    message: str = Field(description="One line a reader understands.")
    value: float | None = None
    limit: float | None = None


class StructureQc(BaseModel):
    """The numbers of one structure (None where not measurable, e.g. no probabilities)."""

    model_config = ConfigDict(extra="forbid")

    volume_mm3: float
    main_component_fraction: float | None = None
    on_bone_fraction: float | None = None
    border_fraction: float | None = None
    mean_confidence: float | None = None
    uncertain_fraction: float | None = None


class QcRecord(BaseModel):
    """Segmentation QC of one result (``results.json["qc"]``)."""

    model_config = ConfigDict(extra="forbid")

    version: int = QC_VERSION
    outcome: Outcome
    reasons: list[QcReason] = Field(default_factory=list)
    structures: dict[str, StructureQc] = Field(default_factory=dict)
    ratios: dict[str, float | None] = Field(default_factory=dict)
    mean_foreground_confidence: float | None = None
    confidence_available: bool = False

    def summary(self, limit: int = 3) -> str:
        """``FAIL: reason; reason; (+2 more)``: one line for banners, logs and the job error."""
        head = self.outcome.upper()
        if not self.reasons:
            return head
        worst = sorted(self.reasons, key=lambda r: r.severity != "fail")
        text = "; ".join(r.message for r in worst[:limit])
        more = len(worst) - limit
        return f"{head}: {text}" + (f" (+{more} more)" if more > 0 else "")


def outcome_of(reasons: list[QcReason]) -> Outcome:
    """fail if any reason fails, warn if any warns, else pass."""
    if any(r.severity == "fail" for r in reasons):
        return "fail"
    return "warn" if reasons else "pass"

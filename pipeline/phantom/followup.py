"""A follow-up exam of a phantom knee: the same patient and knee, later, with known cartilage loss.

Why the bones stay put: a follow-up must differ from its baseline only by what is measured, so
the change a node reports can be checked against the truth. The follow-up is the baseline's knee
(same seed: size, pose, field of view, T2) whose cartilage surfaces have moved towards the bone by
``loss_mm`` per region; the bones are placed from the baseline's thicknesses (the joint space
widens by the loss, filled with fluid). The patient (name, ID) is the baseline's; the Study Date
is ``interval_days`` later; the UIDs (hashed from the truth, which records the follow-up) are new;
the noise is a new realisation (``visit`` seeds it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta

from pipeline.phantom.geometry import REGION_CODES

#: The baseline phantom's Study Date (a follow-up's is ``interval_days`` later).
BASELINE_DATE = date(2026, 1, 1)
#: Shorthand region groups of ``--loss``: the weight-bearing zone of each compartment.
LOSS_GROUPS: dict[str, tuple[str, ...]] = {
    "medial": ("med_wb_fem_cart", "med_tib_cart"),
    "lateral": ("lat_wb_fem_cart", "lat_tib_cart"),
}
MIN_THICKNESS_MM = 0.2  # the phantom's smallest plate (make_phantom's range)


@dataclass(frozen=True)
class Followup:
    """What makes a phantom a follow-up: the thickness lost per region and when.

    ``loss_mm`` maps regions of :data:`pipeline.phantom.geometry.REGION_CODES` to a loss >= 0 mm
    (regions not named lose nothing); ``visit`` numbers the exam (1 = first follow-up) and seeds
    its noise; ``reposition_deg`` turns the knee in the scanner by that much about the LPS axes
    (a patient is never positioned twice the same; the anatomy does not change).
    """

    loss_mm: Mapping[str, float] = field(default_factory=dict)
    interval_days: int = 365
    visit: int = 1
    reposition_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)  # added to the baseline's pose

    def __post_init__(self) -> None:
        unknown = set(self.loss_mm) - set(REGION_CODES)
        if unknown:
            raise ValueError(f"unknown cartilage regions {sorted(unknown)}; known: "
                             f"{list(REGION_CODES)} (or {', '.join(LOSS_GROUPS)})")
        bad = {k: v for k, v in self.loss_mm.items() if not v >= 0}
        if bad:
            raise ValueError(f"a loss must be >= 0 mm (the bones stay put; a gain would close "
                             f"the joint space); got {bad}")
        if self.interval_days < 1 or self.visit < 1:
            raise ValueError("interval_days and visit must be >= 1")

    @property
    def study_date(self) -> date:
        """The follow-up's Study Date."""
        return BASELINE_DATE + timedelta(days=self.interval_days)

    def losses(self) -> dict[str, float]:
        """Loss of every region (0 where none), in region order."""
        return {r: float(self.loss_mm.get(r, 0.0)) for r in REGION_CODES}

    def apply(self, baseline_mm: Mapping[str, float]) -> dict[str, float]:
        """The follow-up's thickness per region from the baseline's."""
        out = {r: round(float(baseline_mm[r]) - loss, 6) for r, loss in self.losses().items()}
        thin = {r: t for r, t in out.items() if t < MIN_THICKNESS_MM}
        if thin:
            raise ValueError(f"the loss leaves less than {MIN_THICKNESS_MM} mm of cartilage: {thin}")
        return out

    def record(self, baseline_mm: Mapping[str, float]) -> dict[str, object]:
        """The ``followup`` section of the follow-up's truth.json."""
        return {
            "visit": self.visit,
            "baseline_study_date": BASELINE_DATE.isoformat(),
            "study_date": self.study_date.isoformat(),
            "interval_days": self.interval_days,
            "loss_mm": self.losses(),
            "reposition_deg": list(self.reposition_deg),
            "baseline_thickness_mm": {r: float(baseline_mm[r]) for r in REGION_CODES},
        }


def parse_loss(specs: list[str] | str) -> dict[str, float]:
    """``["medial=0.3", "pat_cart=0.2"]`` (or one comma-separated string) -> loss per region.

    A group name (:data:`LOSS_GROUPS`) sets each of its regions. Raises ValueError naming the bad
    item.
    """
    items = [specs] if isinstance(specs, str) else list(specs)
    out: dict[str, float] = {}
    for item in (p.strip() for s in items for p in s.split(",") if p.strip()):
        name, sep, value = item.partition("=")
        try:
            mm = float(value)
        except ValueError:
            raise ValueError(f"--loss {item!r}: expected REGION=MM, e.g. medial=0.3") from None
        if not sep:
            raise ValueError(f"--loss {item!r}: expected REGION=MM, e.g. medial=0.3")
        regions = LOSS_GROUPS.get(name.strip(), (name.strip(),))
        for region in regions:
            if region not in REGION_CODES:
                raise ValueError(f"--loss {item!r}: unknown region; known: "
                                 f"{', '.join((*LOSS_GROUPS, *REGION_CODES))}")
            out[region] = mm
    return out

"""Baseline/follow-up phantom pairs quantified through the real quantify code (truth label maps).

Medium phantoms (adult-size knee, 84 mm field of view, see tests/pipeline/quantify/conftest.py):
on the ``small`` preset the plate rims dominate and the absolute thickness is 0.1-0.4 mm low,
which a difference mostly cancels, but a 0.1 mm tolerance on the change needs real-size plates.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pytest

from pipeline.change import PriorExam, model_id
from pipeline.phantom import BASELINE_DATE, Followup, Phantom, make_phantom
from pipeline.quantify import Geometry, quantify
from pipeline.results import Results, ResultsBase
from tests.pipeline.quantify.conftest import FOV_MM, THICKNESS

#: The "model" of the truth label maps (both exams must share one for a comparison).
TRUTH_MODEL = {"algorithm_name": "phantom truth labels", "algorithm_version": "1",
               "configuration": "truth"}
#: Known loss (mm): 0.3 / 0.4 in the medial weight-bearing zone, none elsewhere.
LOSS_MM = {"med_wb_fem_cart": 0.3, "med_tib_cart": 0.4}
INTERVAL_DAYS = 400


@dataclass(frozen=True)
class QuantifiedPair:
    """A baseline and its follow-up, as phantoms and as typed results."""

    baseline: Phantom
    followup: Phantom
    baseline_results: ResultsBase
    followup_results: ResultsBase

    @property
    def followup_date(self) -> date:
        return self.followup.followup.study_date  # type: ignore[union-attr]

    def prior(self) -> PriorExam:
        """The baseline as the compare stage would hand it in."""
        return PriorExam(study_date=BASELINE_DATE, results=self.baseline_results,
                         model_id=model_id(TRUTH_MODEL), job_id="baseline-job")


def quantified(ph: Phantom) -> ResultsBase:
    """quantify() of the phantom's truth label map, as typed results."""
    geom = Geometry.of(ph.grid.spacing, ph.grid.origin, ph.grid.direction)
    res = quantify(ph.labels, geom).results
    return Results.model_validate({**res, "model": TRUTH_MODEL, "study_uid": f"study-{ph.study_date}",
                                   "series_uid": f"series-{ph.study_date}"})


def medium_pair(seed: int, side: str, orientation: str, spacing: tuple[float, float, float],
                reposition_deg: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> QuantifiedPair:
    """A medium phantom, its follow-up with :data:`LOSS_MM`, both quantified (~10 s here)."""
    shape = tuple(round(FOV_MM / s) for s in spacing)
    kw = {"side": side, "orientation": orientation, "spacing": spacing, "shape": shape,
          "scale": 1.0, "thickness": THICKNESS}
    base = make_phantom(seed, "small", **kw)  # type: ignore[arg-type]
    spec = Followup(LOSS_MM, interval_days=INTERVAL_DAYS, reposition_deg=reposition_deg)
    fu = make_phantom(seed, "small", followup=spec, **kw)  # type: ignore[arg-type]
    return QuantifiedPair(base, fu, quantified(base), quantified(fu))


@pytest.fixture(scope="session")
def pairs() -> list[QuantifiedPair]:
    """Two pairs: a right knee re-scanned in the same pose, a left knee repositioned by a few
    degrees on another grid and slice orientation."""
    return [medium_pair(21, "right", "sagittal", (0.6, 0.6, 0.8)),
            medium_pair(22, "left", "coronal", (0.55, 0.65, 0.85), reposition_deg=(3.0, -2.0, 4.0))]

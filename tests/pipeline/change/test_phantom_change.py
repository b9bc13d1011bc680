"""The change of a phantom follow-up with known loss, through the real quantify code."""

from __future__ import annotations

import pytest

from kneenode.settings import ChangeSettings
from pipeline.change import ChangeRefused, PriorExam, compute_change, model_id
from pipeline.phantom import BASELINE_DATE
from pipeline.quantify.results import THICKNESS_REGIONS
from pipeline.results import Results
from tests.pipeline.change.conftest import INTERVAL_DAYS, LOSS_MM, TRUTH_MODEL, QuantifiedPair


def test_known_loss_is_reported_within_0_1_mm_and_unchanged_regions_are_not_flagged(
    pairs: list[QuantifiedPair],
) -> None:
    for pair in pairs:
        rep = compute_change(pair.followup_results, pair.followup_date, [pair.prior()],
                             ChangeSettings(), current_job_id="followup-job")
        assert rep.status == "compared" and rep.interval_days == INTERVAL_DAYS
        assert rep.side == pair.baseline.side and rep.prior.study_date == BASELINE_DATE
        truth = pair.followup.truth["followup"]["loss_mm"]
        sdc = ChangeSettings().sdc_mm
        print(f"\n{pair.baseline.side} {pair.baseline.orientation}: region  change  truth  error")
        for t in rep.thickness:
            expected = -truth[t.region]
            print(f"  {t.region:18s} {t.change_mm:+.3f} {expected:+.3f} {t.change_mm - expected:+.3f}")
            assert t.change_mm == pytest.approx(expected, abs=0.1), t.region
            if t.region in LOSS_MM:
                assert t.flagged, t.region
                assert t.change_percent_per_year < 0
            else:
                assert abs(t.change_mm) < sdc[t.region] and not t.flagged, t.region
        years = INTERVAL_DAYS / 365.25
        wb = {t.region: t for t in rep.thickness}["med_wb_fem_cart"]
        assert wb.change_mm_per_year == pytest.approx(wb.change_mm / years, abs=1e-3)
        assert wb.change_percent_per_year == pytest.approx(
            100 * wb.change_mm / wb.prior_mm / years, abs=1e-2)
        vol = {v.tissue: v for v in rep.volume}
        assert vol["med_tib_cart"].flagged and vol["med_tib_cart"].change_mm3 < 0
        assert not vol["lat_tib_cart"].flagged and not vol["pat_cart"].flagged
        assert set(rep.flagged) == {f"{r}_mm_mean" for r in LOSS_MM} | {"med_tib_cart_ml"}
        assert [p.study_date for p in rep.trend] == [BASELINE_DATE, pair.followup_date]


def test_the_two_knees_of_a_patient_are_never_compared(pairs: list[QuantifiedPair]) -> None:
    right, left = pairs
    other = PriorExam(study_date=BASELINE_DATE, results=left.baseline_results,
                      model_id=model_id(TRUTH_MODEL))
    with pytest.raises(ChangeRefused, match="left knee"):
        compute_change(right.followup_results, right.followup_date, [other], ChangeSettings())


def test_another_model_version_is_refused(pairs: list[QuantifiedPair]) -> None:
    pair = pairs[0]
    model = {**TRUTH_MODEL, "algorithm_version": "2"}
    newer = Results.model_validate({**pair.baseline_results.model_dump(), "model": model})
    prior = PriorExam(study_date=BASELINE_DATE, results=newer, model_id=model_id(model))
    with pytest.raises(ChangeRefused, match="re-process"):
        compute_change(pair.followup_results, pair.followup_date, [prior], ChangeSettings())
    assert set(THICKNESS_REGIONS) >= set(LOSS_MM)

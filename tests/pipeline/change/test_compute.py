"""pipeline.change on typed results made up here: definitions, choice of prior, refusals."""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import ChangeSettings
from pipeline.change import ChangeRefused, PriorExam, compute_change, model_id, not_compared
from pipeline.quantify.results import THICKNESS_REGIONS
from pipeline.results import Results, ResultsBase, read_results, update_results

MODEL = {"algorithm_name": "kneenode-nnunet", "algorithm_version": "1.2", "configuration": "3d_fullres",
         "checkpoint_sha256": ["ab" * 32]}
BASE_MM = {r: 2.0 for r in THICKNESS_REGIONS}
TODAY = date(2027, 1, 1)


def results(side: str | None = "right", model: dict[str, Any] | None = None, loss: float = 0.0,
            qc: str | None = None, **mm: float | None) -> ResultsBase:
    """Typed results with every region 2.0 mm (minus ``loss`` in med_wb_fem_cart) or ``mm``."""
    values = {**BASE_MM, **mm}
    if loss:
        values["med_wb_fem_cart"] -= loss
    data: dict[str, Any] = {"side": side, "model": MODEL if model is None else model,
                            "study_uid": "1.2.3", "series_uid": "1.2.3.4"}
    data.update({f"{r}_mm_mean": v for r, v in values.items()})
    data.update({"fem_cart_ml": 3.0, "med_tib_cart_ml": 0.5 - loss, "lat_tib_cart_ml": 0.5,
                 "pat_cart_ml": 0.4})
    if qc:
        data["qc"] = {"version": "1", "outcome": qc, "reasons": [], "structures": {},
                      "ratios": {}, "policy": "hold", "summary": qc}
    return Results.model_validate(data)


def prior(days_before: int, res: ResultsBase | None = None, job: str = "p1") -> PriorExam:
    res = res or results()
    return PriorExam(study_date=TODAY - timedelta(days=days_before), results=res,
                     model_id=model_id(res.model), job_id=job)


def test_change_per_region_rates_and_flags() -> None:
    rep = compute_change(results(loss=0.3), TODAY, [prior(365)], ChangeSettings(), current_job_id="c1")
    assert rep.status == "compared" and rep.interval_days == 365 and rep.prior.job_id == "p1"
    by = {t.region: t for t in rep.thickness}
    wb = by["med_wb_fem_cart"]
    assert wb.change_mm == pytest.approx(-0.3) and wb.flagged
    assert wb.change_percent == pytest.approx(-15.0)
    assert wb.change_percent_per_year == pytest.approx(-15.0 * 365.25 / 365, abs=1e-3)
    assert wb.change_mm_per_year == pytest.approx(-0.3 * 365.25 / 365, abs=1e-4)
    assert all(t.change_mm == 0 and not t.flagged for r, t in by.items() if r != "med_wb_fem_cart")
    vol = {v.tissue: v for v in rep.volume}
    assert vol["med_tib_cart"].change_mm3 == pytest.approx(-300.0)
    assert vol["med_tib_cart"].change_percent == pytest.approx(-60.0) and vol["med_tib_cart"].flagged
    assert rep.flagged == ["med_wb_fem_cart_mm_mean", "med_tib_cart_ml"]
    assert [p.current for p in rep.trend] == [False, True] and rep.trend[1].job_id == "c1"
    assert rep.trend[0].thickness_mm["med_wb_fem_cart"] == 2.0
    assert rep.trend[1].volume_mm3["med_tib_cart"] == pytest.approx(200.0)


def test_rate_uses_the_real_interval() -> None:
    one = compute_change(results(loss=0.4), TODAY, [prior(365)], ChangeSettings())
    two = compute_change(results(loss=0.4), TODAY, [prior(730)], ChangeSettings())
    a = {t.region: t for t in one.thickness}["med_wb_fem_cart"]
    b = {t.region: t for t in two.thickness}["med_wb_fem_cart"]
    assert a.change_mm == b.change_mm == pytest.approx(-0.4)
    assert b.change_mm_per_year == pytest.approx(a.change_mm_per_year / 2, rel=1e-3)
    assert two.interval_years == pytest.approx(730 / 365.25, abs=1e-4)


def test_most_recent_prior_is_used_and_the_trend_has_every_exam_oldest_first() -> None:
    priors = [prior(365, results(loss=0.1), "mid"), prior(1000, job="old"),
              prior(30, results(loss=0.15), "recent")]
    rep = compute_change(results(loss=0.3), TODAY, priors, ChangeSettings())
    assert rep.prior.job_id == "mid"  # "recent" is closer than min_interval_days (90)
    assert [s.job_id for s in rep.skipped] == ["recent"] and "90 days" in rep.skipped[0].reason
    assert [p.job_id for p in rep.trend] == ["old", "mid", "recent", None]
    wb = {t.region: t for t in rep.thickness}["med_wb_fem_cart"]
    assert wb.change_mm == pytest.approx(-0.2) and not wb.flagged  # 0.2 is not > SDC 0.2
    tight = compute_change(results(loss=0.3), TODAY, priors, ChangeSettings(min_interval_days=7))
    assert tight.prior.job_id == "recent"


def test_sdc_per_region_is_configurable() -> None:
    sdc = ChangeSettings(sdc_mm={**{r: 0.2 for r in THICKNESS_REGIONS}, "med_wb_fem_cart": 0.5})
    rep = compute_change(results(loss=0.3), TODAY, [prior(365)], sdc)
    assert "med_wb_fem_cart_mm_mean" not in rep.flagged
    with pytest.raises(NodeError) as err:
        compute_change(results(), TODAY, [], ChangeSettings(sdc_mm={"medial": 0.1}))
    assert err.value.code == ErrorCode.CONFIG_ERROR and "medial" in str(err.value)
    with pytest.raises(ValueError, match="> 0"):
        ChangeSettings(sdc_mm={"pat_cart": 0})


def test_other_side_or_model_is_refused_not_compared() -> None:
    current = results(loss=0.3)
    for bad in (prior(365, results(side="left")), prior(365, results(side=None)),
                prior(365, results(model={**MODEL, "algorithm_version": "1.3"})),
                prior(365, results(model={**MODEL, "checkpoint_sha256": ["cd" * 32]})),
                prior(365, results(model={**MODEL, "configuration": "3d_cascade_fullres"}))):
        with pytest.raises(ChangeRefused) as err:
            compute_change(current, TODAY, [prior(400), bad], ChangeSettings())
        assert isinstance(err.value, ValueError) and isinstance(err.value, NodeError)
    # the caller's model id must be the prior's own (the function checks, it does not trust)
    liar = PriorExam(study_date=date(2026, 1, 1), results=results(model={**MODEL, "algorithm_version": "0.9"}),
                     model_id=model_id(MODEL))
    with pytest.raises(ChangeRefused, match="not the one of its results"):
        compute_change(current, TODAY, [liar], ChangeSettings())
    with pytest.raises(ChangeRefused, match="side is unknown"):
        compute_change(results(side=None), TODAY, [prior(365, results(side=None))], ChangeSettings())


def test_reasons_when_nothing_is_compared() -> None:
    opts = ChangeSettings()
    none = compute_change(results(), TODAY, [], opts)
    assert none.status == "no_prior" and none.prior is None and none.thickness == []
    assert "no earlier exam" in none.reason and len(none.trend) == 1
    short = compute_change(results(), TODAY, [prior(10)], opts)
    assert short.status == "interval_too_short" and "90 days" in short.reason
    later = compute_change(results(), TODAY, [prior(-30)], opts)
    assert later.status == "no_prior" and later.skipped[0].reason == "later than the current exam"
    failed = compute_change(results(), TODAY, [prior(365, results(qc="fail"))], opts)
    assert failed.status == "no_prior" and "QC failed" in failed.skipped[0].reason
    used = compute_change(results(), TODAY, [prior(365, results(qc="fail"))],
                          ChangeSettings(use_failed_qc_priors=True))
    assert used.status == "compared"
    assert compute_change(results(side=None), TODAY, [], opts).status == "side_unknown"
    nothing = compute_change(results(**{r: None for r in THICKNESS_REGIONS}), TODAY, [prior(365)], opts)
    assert nothing.status == "not_measured"
    down = not_compared(results(), TODAY, "priors_unavailable", "no comparison: PACS did not answer")
    assert down.status == "priors_unavailable" and down.current.study_date == TODAY


def test_a_region_missing_in_one_exam_has_a_reason() -> None:
    cur = results(pat_cart=None)
    rep = compute_change(cur, TODAY, [prior(365)], ChangeSettings())
    pat = {t.region: t for t in rep.thickness}["pat_cart"]
    assert pat.change_mm is None and not pat.flagged and pat.reason.startswith("current exam")


def test_report_goes_into_results_json_and_the_csv(tmp_path: Path) -> None:
    """results.json keeps old documents valid (change null) and validates a report."""
    update_results(tmp_path, {"side": "right"})
    assert read_results(tmp_path)["change"] is None
    rep = compute_change(results(loss=0.3), TODAY, [prior(365)], ChangeSettings())
    record = update_results(tmp_path, {"change": rep.model_dump(mode="json")})
    assert record["change"]["prior"]["study_date"] == "2026-01-01"
    assert record["change"]["status"] == "compared"
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert rows[0]["change_status"] == "compared" and rows[0]["change_interval_days"] == "365"
    assert float(rows[0]["med_wb_fem_cart_mm_mean_change"]) == pytest.approx(-0.3)
    assert rows[0]["med_wb_fem_cart_mm_mean_change_flagged"] == "True"
    assert rows[0]["lat_tib_cart_mm_mean_change_flagged"] == "False"
    assert float(rows[0]["med_tib_cart_mm3_change"]) == pytest.approx(-300.0)
    with pytest.raises(NodeError, match="change"):
        update_results(tmp_path, {"change": {"status": "maybe"}})

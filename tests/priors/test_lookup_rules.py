"""The parts of the priors lookup that need no PACS: the side and selection pick, the prior
job's snapshot, the bounded wait of the compare stage, the history check (a real SQLite
history), the settings and where ``compare`` sits in a job's chain."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from kneenode.history import ExamRecord, model_key, open_history
from kneenode.settings import PriorsSettings, SelectionSettings, Settings
from scp.priors import SeriesRecord, study_window
from scp.routing import match_series
from workers.analysis import node_chain
from workers.jobconfig import build_config
from workers.priorjobs import note_prior_created, note_prior_end, prior_config, wait_for_priors
from workers.priors import Current, LookupOutcome, _known, pick_series, side_of, write_lookup
from workers.selection import rules_for

RULES = rules_for(SelectionSettings())


def _series(uid: str, description: str = "SAG 3D DESS KNEE", laterality: str = "",
            instances: int = 48, body_part: str = "KNEE") -> SeriesRecord:
    return SeriesRecord(study_uid="1.2", series_uid=uid, modality="MR", description=description,
                        protocol_name="", body_part=body_part, laterality=laterality,
                        instances=instances)


def test_side_from_laterality_then_words() -> None:
    assert side_of("L") == "left" and side_of("R", "LEFT KNEE") == "right"
    assert side_of("", "KNEE", "SAG PD RIGHT") == "right"
    assert side_of("", "Knie links") == "left"
    assert side_of("", "KNEE", "SAG PD") is None
    assert side_of("", "LEFT RIGHT") is None  # contradictory: unknown


def test_pick_applies_side_and_selection_rules() -> None:
    candidates = [
        _series("1", "LOCALIZER", instances=3),              # refused by selection: not a volume
        _series("2", "AX T1 HEAD", body_part="HEAD"),        # refused: no knee keyword
        _series("3", "SAG 3D DESS KNEE", laterality="R"),    # the other knee
        _series("4", "COR PD KNEE", laterality="L", instances=30),
        _series("5", "SAG 3D DESS KNEE", laterality="L"),    # same description as the current
    ]
    chosen, why = pick_series(candidates, "left", RULES, "SAG 3D DESS KNEE")
    assert chosen is not None and chosen.series_uid == "5"
    assert len(why) == 3 and "right knee" in why[2] and "no knee keyword" in why[1]
    chosen, _ = pick_series(candidates[:3], "left", RULES)
    assert chosen is None
    # unknown side of the current series: the header cannot exclude a knee; compare decides
    chosen, _ = pick_series([candidates[2]], None, RULES)
    assert chosen is not None


def test_study_window_is_strictly_earlier() -> None:
    assert study_window("20270101", 365) == "20260101-20261231"


def test_settings_need_a_pacs_when_enabled() -> None:
    with pytest.raises(ValidationError, match="priors.enabled needs priors.pacs"):
        PriorsSettings(enabled=True)
    ok = PriorsSettings(enabled=True, pacs={"ae_title": "PACS", "host": "127.0.0.1", "port": 104})
    assert ok.method == "move" and ok.max_priors == 1


def test_compare_only_in_chains_of_routes_with_priors(tmp_path: Path) -> None:
    pacs = {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}
    settings = Settings(data_dir=tmp_path, routes=[
        {"name": "with", "calling_ae": ["A"], "priors": {"enabled": True, "pacs": pacs}},
        {"name": "without", "calling_ae": ["B"]}])
    stages = node_chain(settings)
    with_ = build_config(settings, stages, match_series(settings, {"calling_ae": "A"}))
    without = build_config(settings, stages, match_series(settings, {"calling_ae": "B"}))
    names = with_.stage_names
    assert names.index("quantify") < names.index("compare") < names.index("encode")
    assert "compare" not in without.stage_names and without.priors is None
    assert with_.priors is not None and with_.priors["pacs"]["port"] == 104
    prior = prior_config(with_, "current-job")
    assert prior.prior_of == "current-job" and prior.priors is None
    assert not {"compare", "encode", "verify", "deliver"} & set(prior.stage_names)
    assert "history" in prior.stage_names and "segment" in prior.stage_names
    assert prior.models == with_.models and prior.profile == with_.profile
    assert prior.settings["segment"] == with_.settings["segment"]
    assert prior.settings["delivery"]["destinations"] == []
    assert prior.settings["qc"]["on_fail"] == "deliver_flagged"


def test_wait_ends_with_the_lookup_or_the_priors(tmp_path: Path) -> None:
    job = tmp_path / "current"
    never = lambda: None
    started = time.monotonic()
    wait = wait_for_priors(job, time.monotonic() + 0.5, check=never, poll_s=0.05)
    assert wait.status == "timeout" and "lookup did not finish" in wait.message
    assert time.monotonic() - started < 30
    write_lookup(job, LookupOutcome("pacs_unreachable", "no association with PACS@h:1"))
    assert wait_for_priors(job, time.monotonic() + 60, check=never).status == "pacs_unreachable"
    asked = {"series_uid": "9.9", "study_uid": "9", "study_date": "20260101",
             "retrieve": {"state": "ok", "code": 0, "message": ""}}
    write_lookup(job, LookupOutcome("found", "1 asked for", requested=[asked]))
    wait = wait_for_priors(job, time.monotonic() + 0.5, check=never, poll_s=0.05)
    assert wait.status == "timeout" and "not arrived" in wait.message
    prior = tmp_path / "prior"
    note_prior_created(job, "9.9", "prior-job", prior, "9")
    wait = wait_for_priors(job, time.monotonic() + 0.5, check=never, poll_s=0.05)
    assert wait.status == "timeout" and "processing" in wait.message
    note_prior_end(prior, "failed", {"code": "SEGMENTATION_FAILED", "message": "boom"})
    wait = wait_for_priors(job, time.monotonic() + 60, check=never)
    assert wait.status == "ready" and wait.failed == ("9.9",) and not wait.done
    note_prior_end(tmp_path / "not-a-prior", "done")  # a job that is no prior: nothing happens


def test_history_check_is_per_model(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    card = {"algorithm_name": "demo", "algorithm_version": "1", "checkpoint_sha256": ["ab" * 32]}
    with open_history(settings) as history:
        history.record(ExamRecord(
            job_id="j1", study_uid="1", series_uid="1.1", side="left",
            pseudonym=history.pseudonym("P-A", "HOSPITAL_A"), study_date=None,
            model_name="demo", model_version="1", model_checksum="ab" * 32))
    current = Current("P-A", "HOSPITAL_A", "2", "20270101", "left", "")
    other_patient = Current("P-A", "HOSPITAL_B", "2", "20270101", "left", "")
    series = _series("1.1")
    assert _known(settings, model_key(card))(current, series)
    assert not _known(settings, model_key({**card, "algorithm_version": "2"}))(current, series)
    assert not _known(settings, model_key(card))(other_patient, series)


def test_compare_reads_only_this_knee_and_model_from_the_history(tmp_path: Path) -> None:
    """A prior whose header had no side is retrieved, but its measured side decides: the
    other knee (or another model's record) is never among the priors compared."""
    from datetime import date

    from workers.compare import _history_priors
    from workers.priorjobs import PriorsWait

    settings = Settings(data_dir=tmp_path)
    common = {"study_uid": "1", "model_name": "demo", "model_version": "1",
              "model_checksum": "ab" * 32}
    with open_history(settings) as history:
        who = history.pseudonym("P-A", "HOSPITAL_A")
        history.record(ExamRecord(job_id="right", series_uid="1.1", pseudonym=who, side="right",
                                  study_date=date(2026, 1, 1), **common))
        history.record(ExamRecord(job_id="old-model", series_uid="1.2", pseudonym=who,
                                  side="left", study_date=date(2026, 1, 1),
                                  **{**common, "model_version": "0"}))
        history.record(ExamRecord(job_id="left", series_uid="1.3", pseudonym=who, side="left",
                                  study_date=date(2026, 2, 1), **common))
        key = model_key({"algorithm_name": "demo", "algorithm_version": "1",
                         "checkpoint_sha256": ["ab" * 32]})
        wait = PriorsWait("ready", "", done=("1.1", "1.3"))
        found = _history_priors(history, who, "left", key, date(2027, 1, 1), wait,
                                time.monotonic() + 30, lambda: None)
        assert [e.job_id for e in found] == ["left"]
        assert _history_priors(history, who, "left", key, date(2026, 2, 1), wait,
                               time.monotonic() + 30, lambda: None) == []  # same day: no prior

"""Stage ``history``: record the finished job's exam in the results history.

The last stage of the node's chain, so it sees the final ``results.json`` (every measurement,
the QC outcome, the model card) of a job that has delivered: a job that failed or was discarded
never gets here and is not recorded; a job held for QC review is recorded once an operator
releases it (``qc_decision = released``). The patient's identity comes from the series' own DICOM
header in the spool (Patient ID + Issuer, turned into the pseudonym at once and never logged).

A series without a Patient ID is not recorded (it could not be told from other anonymous
series): the stage says so in ``history/history.json`` and the log, and the job still ends done.
"""

from __future__ import annotations

import json
from pathlib import Path

from kneenode.fsio import write_json_atomic
from kneenode.history import (
    ExamRecord,
    HistoryStore,
    PatientHeader,
    model_checksum,
    open_history,
    read_patient_header,
)
from kneenode.logs import get_logger
from pipeline.results import read_results
from workers.intake import CONFIG_FILE
from workers.review import decision
from workers.stages import StageContext

log = get_logger(__name__)
HISTORY_STAGE = "history"
OUTCOME_FILE = "history.json"


def _profile(job_dir: Path) -> str:
    try:
        return str(json.loads((job_dir / CONFIG_FILE).read_text(encoding="utf-8"))["profile"])
    except (OSError, ValueError, KeyError):
        return "default"


def exam_for_job(ctx: StageContext, pseudonym: str, header: PatientHeader) -> ExamRecord:
    """The :class:`ExamRecord` of the job in ``ctx`` (results.json, snapshot, header)."""
    results = read_results(ctx.job_dir)
    card = results.get("model") or {}
    qc = results.get("qc") or {}
    side = results.get("side") or {"R": "right", "L": "left"}.get(header.laterality or "")
    return ExamRecord(
        job_id=ctx.job_id, study_uid=results.get("study_uid") or header.study_uid,
        series_uid=results.get("series_uid") or header.series_uid, pseudonym=pseudonym,
        side=side, study_date=header.study_date, acquisition_date=header.acquisition_date,
        series_version=int(ctx.summary.get("version") or 1), profile=_profile(ctx.job_dir),
        model_name=str(card.get("algorithm_name", "")),
        model_version=str(card.get("algorithm_version", "")), model_checksum=model_checksum(card),
        qc_outcome=qc.get("outcome"), qc_decision=decision(ctx.job_dir),
        laterality=header.laterality, results=results,
    )


def job_exam(ctx: StageContext, store: HistoryStore) -> ExamRecord | None:
    """The exam the job in ``ctx`` is (as :func:`record_history` would record it, not yet
    stored), None when its series has no Patient ID. For stages that compare the current exam
    with the history before it is recorded."""
    header = read_patient_header(ctx.series_path)
    if not header.patient_id:
        return None
    return exam_for_job(ctx, store.pseudonym(header.patient_id, header.issuer), header)


def record_history(ctx: StageContext) -> None:
    """Record the job's exam (replacing an earlier record of this job); see the module doc."""
    if not ctx.settings.history.enabled:
        write_json_atomic(ctx.work_dir / OUTCOME_FILE, {"recorded": False,
                                                        "reason": "history.enabled is off"})
        return
    with open_history(ctx.settings) as store:
        exam = job_exam(ctx, store)
        if exam is None:
            reason = "the series has no Patient ID: it cannot be linked to a patient's history"
            log.warning("exam not recorded in the history", job_id=ctx.job_id, reason=reason)
            write_json_atomic(ctx.work_dir / OUTCOME_FILE, {"recorded": False, "reason": reason})
            return
        store.record(exam)
    log.info("exam recorded in the history", job_id=ctx.job_id, series_uid=exam.series_uid,
             side=exam.side, model=exam.model_key, backend=store.dialect)
    write_json_atomic(ctx.work_dir / OUTCOME_FILE, {
        "recorded": True, "pseudonym": exam.pseudonym, "side": exam.side,
        "study_date": exam.study_date, "model": exam.model_key, "qc_outcome": exam.qc_outcome,
        "qc_decision": exam.qc_decision, "database": store.dialect})

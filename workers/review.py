"""What a QC outcome does to a job: record it, and hold a failed one for an operator's review.

After the ``qc`` stage commits, :func:`after_qc` writes the outcome into the job record (field
``qc``, event ``qc`` with the reasons). When the outcome is ``fail`` and the recorded policy is
``hold``, the job goes to state ``review`` with error QC_FAILED (the reasons) instead of queueing
its next stage. An operator then decides:

* :func:`release` (``kneenode release ID``): the job continues with its next stage and delivers
  every result flagged as failed QC (banner, SR QC item);
* :func:`discard` (``kneenode discard ID``): the job ends ``cancelled`` (reason: discarded after
  QC review) and delivers nothing.

The decision is kept in ``<job>/review.json`` so the encoders and a later look know who decided.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kneenode.errors import ErrorCode, NodeError
from kneenode.fsio import write_json_atomic
from workers.jobstate import JobStore, now

REVIEW = "review"
QC_STAGE = "qc"
DECISION_FILE = "review.json"


def read_qc(job_dir: Path) -> dict[str, Any] | None:
    """The qc stage's record (``<job>/qc/qc.json``), None when QC did not run."""
    path = Path(job_dir) / QC_STAGE / "qc.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def decision(job_dir: Path) -> str | None:
    """``released`` / ``discarded`` once an operator decided on this QC result, else None."""
    try:
        return str(json.loads((Path(job_dir) / DECISION_FILE).read_text("utf-8"))["decision"])
    except (FileNotFoundError, KeyError, ValueError):
        return None


def after_qc(store: JobStore, job_id: str, run: int, job_dir: Path, next_stage: str | None) -> bool:
    """Record the QC outcome in the job; True when the job is now held in ``review``.

    Also called for a redelivered message of a committed qc stage (a crash between the stage's
    marker and the hold must not let the result out); a released result is not held again. The
    qc stage itself forgets an earlier decision when it evaluates a new result.
    """
    qc = read_qc(job_dir)
    if qc is None or decision(job_dir) == "released":
        return False
    reasons = [r["message"] for r in qc.get("reasons", [])]
    store.update(job_id, qc=qc["outcome"])
    store.event(job_id, "qc", outcome=qc["outcome"], policy=qc.get("policy"), reasons=reasons)
    if qc["outcome"] != "fail" or qc.get("policy") != "hold" or next_stage is None:
        return False
    err = NodeError(ErrorCode.QC_FAILED, qc.get("summary") or "; ".join(reasons))
    if not store.transition(job_id, run, state=REVIEW, stage=next_stage, error=err.as_dict()):
        return True  # cancelled meanwhile: nothing to queue either
    store.event(job_id, REVIEW, reasons=reasons, next_stage=next_stage)
    return True


def _held(store: JobStore, job_id: str) -> dict[str, Any]:
    job = store.get(job_id)
    if job is None:
        raise NodeError(ErrorCode.FILE_NOT_FOUND, f"no job {job_id}", hint="see `kneenode jobs`")
    if job["state"] != REVIEW:
        raise NodeError(ErrorCode.CONFIG_ERROR, f"job {job_id} is {job['state']}, not in review",
                        hint="only jobs held after failed QC are released or discarded")
    return job


def _decide(job: dict[str, Any], decision: str, operator: str) -> None:
    write_json_atomic(Path(job["job_dir"]) / DECISION_FILE,
                      {"decision": decision, "operator": operator, "t": round(now(), 3)})


def release(store: JobStore, job_id: str, operator: str = "") -> tuple[str, int]:
    """Let a held job continue; returns (next stage, run) for the caller to enqueue."""
    job = _held(store, job_id)
    _decide(job, "released", operator)
    run = int(job["run"])
    if not store.transition(job_id, run, state="queued", error=None):
        raise NodeError(ErrorCode.CONFIG_ERROR, f"job {job_id} changed while releasing it")
    store.event(job_id, "released", operator=operator, next_stage=job["stage"])
    return str(job["stage"]), run


def discard(store: JobStore, job_id: str, operator: str = "") -> None:
    """End a held job without delivering anything (state ``cancelled``)."""
    job = _held(store, job_id)
    _decide(job, "discarded", operator)
    if not store.transition(job_id, int(job["run"]), state="cancelled",
                            reason="discarded after QC review"):
        raise NodeError(ErrorCode.CONFIG_ERROR, f"job {job_id} changed while discarding it")
    store.event(job_id, "discarded", operator=operator)

"""The ``compare`` stage: the change since the most recent prior exam of this knee.

In a job's chain after quantify (and shape), before encode, only when its route looks up priors
(``priors.enabled``; docs/priors.md). It waits, at most ``priors.wait_s``, for the lookup and for
every prior it retrieved to be processed (:func:`workers.priors.wait_for_priors`), then reads
the priors from the results history (same pseudonym, same measured side, same model key) and
hands them to :func:`pipeline.change.compute_change`. Whatever happens with the PACS, the stage
itself succeeds: ``results.json["change"]`` then says why there is no comparison (``status``
``no_prior``, ``pacs_unreachable``, ``prior_failed`` or ``timeout``, and ``reason``).
"""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path
from typing import Any

from kneenode.history import ExamRecord, HistoryStore, model_key, open_history, read_patient_header
from kneenode.logs import get_logger
from kneenode.settings import PriorsSettings
from pipeline.change import PriorExam, compute_change, model_id, not_compared
from pipeline.results import RESULTS_FILE, Results, update_results
from workers.dispatch import time_limit_s
from workers.intake import CONFIG_FILE
from workers.priorjobs import PriorsWait, prior_states, wait_for_priors
from workers.stages import StageContext

log = get_logger(__name__)
#: How long a processed prior may take to appear in the history after its job ended (s); its
#: ``history`` stage commits before the job is done, so this is only a safety margin.
HISTORY_GRACE_S = 30.0
SIDES = ("left", "right")
#: Time kept free before the compare stage's time limit for the history and the report (s).
LIMIT_MARGIN_S = 60.0


def _why_not(wait: PriorsWait, job_dir: Path) -> tuple[str, str]:
    """The change status and reason when no prior could be compared."""
    if wait.status != "ready":
        return wait.status, wait.message
    if wait.failed:
        states = prior_states(job_dir)
        errors = [f"{uid}: {(states.get(uid, {}).get('error') or {}).get('message', 'failed')}"
                  for uid in wait.failed]
        return "prior_failed", "the prior could not be retrieved or processed: " + "; ".join(errors)
    return "no_prior", "no earlier exam of this knee measured by this model"


def _history_priors(history: HistoryStore, who: str, side: str, model: str, before: date,
                    wait: PriorsWait, deadline: float, check: Any) -> list[ExamRecord]:
    """Earlier exams of this knee by this model, once every processed prior is recorded."""
    while wait.done:
        recorded = {e.series_uid for s in SIDES for e in history.exams(who, s)}
        if set(wait.done) <= recorded or time.monotonic() >= deadline:
            break
        check()
        time.sleep(0.5)
    return [e for e in history.exams(who, side, model)
            if e.exam_date is not None and e.exam_date < before]


def compare(ctx: StageContext) -> None:
    """Wait (bounded) for the priors, then write the change report into results.json."""
    config = json.loads((ctx.job_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    if not config.get("priors"):
        return
    priors = PriorsSettings.model_validate(config["priors"])
    started = time.monotonic()
    # never past the stage's own time limit: a TIMEOUT would fail the job, not just the change
    budget = min(priors.wait_s, max(1.0, time_limit_s(ctx.settings.jobs, "compare") - LIMIT_MARGIN_S))
    wait = wait_for_priors(ctx.job_dir, started + budget, check=ctx.check_cancelled)
    raw = json.loads((ctx.job_dir / RESULTS_FILE).read_text(encoding="utf-8"))
    current = Results.model_validate(raw)
    header = read_patient_header(ctx.series_path)
    today = header.study_date or header.acquisition_date or date.today()
    found: list[ExamRecord] = []
    if header.patient_id and current.side is not None and wait.status == "ready":
        deadline = min(started + budget, time.monotonic() + HISTORY_GRACE_S)
        with open_history(ctx.settings) as history:
            found = _history_priors(history, history.pseudonym(header.patient_id, header.issuer),
                                    current.side, model_key(raw.get("model")), today, wait,
                                    deadline, ctx.check_cancelled)
    if found:
        report = compute_change(current, today, [
            PriorExam(study_date=e.exam_date, results=Results.model_validate(e.results),
                      model_id=model_id(e.results.get("model")), job_id=e.job_id)
            for e in found if e.exam_date is not None],
            ctx.settings.change, current_job_id=ctx.job_id)
    else:
        status, reason = _why_not(wait, ctx.job_dir)
        report = not_compared(current, today, status, reason,  # type: ignore[arg-type]
                              settings=ctx.settings.change, current_job_id=ctx.job_id)
    update_results(ctx.job_dir, {"change": report.model_dump(mode="json")})
    log.info("change since the prior", job_id=ctx.job_id, status=report.status,
             waited_s=round(time.monotonic() - started, 2), priors=len(found))

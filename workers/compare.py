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
from pathlib import Path
from typing import Any

from kneenode.logs import get_logger
from kneenode.settings import PriorsSettings
from pipeline.results import RESULTS_FILE, Results, update_results
from workers.intake import CONFIG_FILE
from workers.priors import PRIORS_DIR, PriorsWait, prior_states, wait_for_priors
from workers.stages import StageContext

log = get_logger(__name__)
#: How long a processed prior may take to appear in the history after its job ended (s).
HISTORY_GRACE_S = 30.0


def _why_not(wait: PriorsWait, job_dir: Path) -> tuple[str, str]:
    """The change status and reason when no prior could be compared."""
    if wait.status != "ready":
        return wait.status, wait.message
    if wait.failed:
        states = prior_states(job_dir)
        errors = [f"{uid}: {(states.get(uid, {}).get('error') or {}).get('message', 'failed')}"
                  for uid in wait.failed]
        return "prior_failed", "the prior could not be processed: " + "; ".join(errors)
    return "no_prior", wait.message or "no earlier exam of this knee measured by this model"


def compare(ctx: StageContext) -> None:
    """Wait (bounded) for the priors, then write the change report into results.json."""
    from kneenode.history import open_history
    from pipeline.change import PriorExam, compute_change, not_compared

    config = json.loads((ctx.job_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    if not config.get("priors"):
        return
    priors = PriorsSettings.model_validate(config["priors"])
    started = time.monotonic()
    wait = wait_for_priors(ctx.job_dir, started + priors.wait_s, check=ctx.check_cancelled)
    current = Results.model_validate(json.loads((ctx.job_dir / RESULTS_FILE).read_text(encoding="utf-8")))
    history = open_history(ctx.settings)
    exam = history.exam_of(ctx.job_id, ctx.series_path, current)
    found: list[Any] = []
    if wait.done and current.side is not None:
        deadline = min(started + priors.wait_s, time.monotonic() + HISTORY_GRACE_S)
        while True:  # a prior's history record is written when its job ends
            found = history.priors_of(exam)
            have = {r.series_uid for r in found}
            if set(wait.done) <= have or time.monotonic() >= deadline:
                break
            ctx.check_cancelled()
            time.sleep(0.5)
    if found:
        report = compute_change(current, exam.study_date, [
            PriorExam(study_date=r.exam_date, results=Results.model_validate(r.results),
                      model_id=None, job_id=r.job_id) for r in found],
            ctx.settings.change, current_job_id=ctx.job_id)
    else:
        status, reason = _why_not(wait, ctx.job_dir)
        report = not_compared(current, exam.study_date, status, reason,  # type: ignore[arg-type]
                              settings=ctx.settings.change, current_job_id=ctx.job_id)
    update_results(ctx.job_dir, {"change": report.model_dump(mode="json")})
    log.info("change since the prior", job_id=ctx.job_id, status=report.status,
             waited_s=round(time.monotonic() - started, 2),
             priors=len(list((ctx.job_dir / PRIORS_DIR).glob("*.json"))))

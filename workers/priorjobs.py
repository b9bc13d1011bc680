"""Prior jobs: the job of a series the priors lookup retrieved, and what links it to the
current job (docs/priors.md).

A prior job runs from the current job's own snapshot (:func:`prior_config`: same profile, same
settings and model checksums) with a chain that ends after measuring and recording it (no
compare, encode, verify, deliver: a prior's results are never sent back to PACS). The link is
kept in files: ``<prior job>/prior_of.json`` names the current job's folder, and
``<current job>/priors/<series_uid>.json`` follows the prior (processing -> done / failed /
ignored), next to the lookup's ``priors/lookup.json``. The ``compare`` stage reads only these
files and the history (:func:`wait_for_priors`), never redis.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kneenode.fsio import write_json_atomic
from workers.jobconfig import COMPARE_STAGE, JobConfig, StageRef
from workers.jobstate import JobStore

#: Stages a prior job leaves out: it is only measured and recorded, never encoded or sent.
PRIOR_SKIPS = frozenset({COMPARE_STAGE, "encode", "verify", "deliver"})
PRIORS_DIR = "priors"
LOOKUP_FILE = "lookup.json"
PRIOR_OF_FILE = "prior_of.json"

#: States of a prior job that end the wait for it (``<job>/priors/<series>.json``).
PRIOR_ENDED = ("done", "failed", "ignored")


def read_lookup(job_dir: Path) -> dict[str, Any] | None:
    """The lookup's outcome (``<job>/priors/lookup.json``), None while it has not ended."""
    path = Path(job_dir) / PRIORS_DIR / LOOKUP_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def prior_config(current: JobConfig, current_job: str) -> JobConfig:
    """The snapshot of a prior job: the current job's (same profile, settings and model
    checksums), a chain without :data:`PRIOR_SKIPS`, no destinations, no lookup of its own."""
    settings = json.loads(json.dumps(current.settings))
    settings.setdefault("delivery", {})["destinations"] = []
    settings["delivery"]["to_sender"] = False
    # a failed QC must not hold a prior for review: the current job waits for it, and
    # compute_change skips failed-QC priors itself (change.use_failed_qc_priors)
    settings.setdefault("qc", {})["on_fail"] = "deliver_flagged"
    return current.model_copy(update={
        "chain": [StageRef(name=s.name, queue=s.queue) for s in current.chain
                  if s.name not in PRIOR_SKIPS],
        "settings": settings, "route_reason": f"prior of job {current_job}",
        "priors": None, "prior_of": current_job})


def note_prior_created(current_dir: Path, series_uid: str, prior_job: str, prior_dir: Path,
                       study_uid: str) -> None:
    """Link both ways: ``<prior>/prior_of.json`` and ``<current>/priors/<series>.json``."""
    write_json_atomic(Path(prior_dir) / PRIOR_OF_FILE,
                      {"job_dir": str(current_dir), "series_uid": series_uid})
    write_json_atomic(Path(current_dir) / PRIORS_DIR / f"{series_uid}.json",
                      {"state": "processing", "job_id": prior_job, "study_uid": study_uid,
                       "series_uid": series_uid, "job_dir": str(prior_dir), "error": None})


def note_prior_end(job_dir: Path, state: str, error: dict[str, Any] | None = None) -> None:
    """A job ended: if it is a prior, tell its current job (``done``, ``failed``, ``ignored``).

    Called for every job's end; costs one ``exists`` for a job that is no prior.
    """
    link = Path(job_dir) / PRIOR_OF_FILE
    if not link.exists():
        return
    info = json.loads(link.read_text(encoding="utf-8"))
    path = Path(info["job_dir"]) / PRIORS_DIR / f"{info['series_uid']}.json"
    record = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    write_json_atomic(path, {**record, "state": state, "error": error})


def prior_states(job_dir: Path) -> dict[str, dict[str, Any]]:
    """Every prior job of a current job, by series UID (``<job>/priors/<series>.json``)."""
    folder = Path(job_dir) / PRIORS_DIR
    if not folder.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text(encoding="utf-8"))
            for p in folder.glob("*.json") if p.name != LOOKUP_FILE}


# -- waiting for the priors (the compare stage) -------------------------------------------------
@dataclass(frozen=True)
class PriorsWait:
    """What the wait found: ``ready`` (every retrieved prior ended; ``done`` lists their series)
    or one of :data:`LOOKUP_STATES` but ``found`` with the reason."""

    status: str
    message: str
    done: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


def wait_for_priors(job_dir: Path, deadline: float, *, check: Callable[[], None],
                    poll_s: float = 0.5) -> PriorsWait:
    """Wait (until ``deadline``, monotonic) for the lookup and every prior it retrieved to end.

    Reads only the job folder (``priors/lookup.json``, ``priors/<series>.json``). ``check`` is
    called each poll (the stage's cancel check).
    """
    while True:
        lookup_ = read_lookup(job_dir)
        states = prior_states(job_dir)
        if lookup_ is not None:
            if lookup_["status"] != "found":
                return PriorsWait(lookup_["status"], lookup_["message"])
            asked = [r["series_uid"] for r in lookup_["requested"]
                     if r["retrieve"]["state"] == "ok"]
            if all(states.get(uid, {}).get("state") in PRIOR_ENDED for uid in asked):
                done = [uid for uid in asked if states[uid]["state"] == "done"]
                done += [r["series_uid"] for r in lookup_["in_history"]]
                failed = [uid for uid in asked if states[uid]["state"] != "done"]
                failed += [r["series_uid"] for r in lookup_["requested"]
                           if r["retrieve"]["state"] != "ok"]
                return PriorsWait("ready", lookup_["message"], tuple(done), tuple(failed))
            missing = [uid for uid in asked if states.get(uid, {}).get("state") not in PRIOR_ENDED]
            why = (f"{len(missing)} retrieved prior(s) not processed in time "
                   f"({', '.join(states.get(u, {}).get('state', 'not arrived') for u in missing)})")
        else:
            why = "the priors lookup did not finish in time"
        if time.monotonic() >= deadline:
            return PriorsWait("timeout", why)
        check()
        time.sleep(poll_s)


def after_compare(store: JobStore, job_id: str, job_dir: Path) -> None:
    """Record the compare stage's outcome on the job: field ``change`` (the status) and event
    ``compare`` (status and reason), as :func:`workers.review.after_qc` does for QC."""
    path = Path(job_dir) / "results.json"
    change = (json.loads(path.read_text(encoding="utf-8")).get("change") or {}) \
        if path.exists() else {}
    if not change:
        return
    store.update(job_id, change=change.get("status"))
    store.event(job_id, "compare", status=change.get("status"), reason=change.get("reason"),
                flagged=change.get("flagged") or [])

"""Priors from PACS: find a patient's earlier knee series, retrieve them, process them like the
current job, so that the ``compare`` stage can report the change (docs/priors.md).

The lookup runs as its own message on the io queue (:data:`LOOKUP_ACTOR`), sent when a job of a
route with ``priors.enabled`` is created, so it runs while the current series is segmented. It
C-FINDs the route's PACS (study level: same Patient ID + Issuer, MR, dates in the window; series
level: the candidates), picks per study the series of the same knee that the route's selection
rules accept, leaves out what the history already holds measured with the job's model, records
each retrieval it asks for in redis (:class:`PendingRetrievals`) and C-MOVEs (or C-GETs) it.
Its outcome goes to ``<job>/priors/lookup.json``; the ``compare`` stage reads only files and the
history, never redis.

A retrieved series arrives by C-STORE like any other; the job creator finds its pending record
and makes it a *prior job* of the current one (:func:`prior_config`): the current job's own
snapshot (same profile, same model checksums), a chain that ends after quantify/shape (no
encode, verify, deliver: a prior's results are never sent back to PACS), no destinations. Its
end (done, failed, ignored) is written to ``<current job>/priors/<series_uid>.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kneenode.fsio import write_json_atomic
from kneenode.logs import get_logger
from kneenode.settings import PriorsSettings, RouteTarget, Settings
from scp.delivery import target_of
from scp.priors import (
    PacsPeer,
    PacsStatus,
    SeriesRecord,
    StudyRecord,
    find_series,
    find_studies,
    move_series,
)
from workers.jobconfig import COMPARE_STAGE, JobConfig, StageRef
from workers.jobstate import JobStore
from workers.selection import Rules, rules_for, select

log = get_logger(__name__)

#: Stages a prior job leaves out: it is only measured and recorded, never encoded or sent.
PRIOR_SKIPS = frozenset({COMPARE_STAGE, "encode", "verify", "deliver"})
PRIORS_DIR = "priors"
LOOKUP_FILE = "lookup.json"
PRIOR_OF_FILE = "prior_of.json"
#: Lookup outcomes (``status`` of lookup.json): ``found`` (retrievals asked for, or the history
#: already held the priors), ``no_prior``, ``pacs_unreachable`` (no association, refused, or a
#: C-FIND answered with an error status), ``timeout`` (a step past its time limit),
#: ``prior_failed`` (every retrieval failed, or the lookup itself failed).
LOOKUP_STATES = ("found", "no_prior", "pacs_unreachable", "timeout", "prior_failed")
#: States of a prior job that end the wait for it (``<job>/priors/<series>.json``).
PRIOR_ENDED = ("done", "failed", "ignored")

_LEFT = re.compile(r"\b(left|lt|links|gauche|izquierd\w*|sinistr\w*)\b", re.IGNORECASE)
_RIGHT = re.compile(r"\b(right|rt|rechts|droit\w*|derech\w*|destr\w*)\b", re.IGNORECASE)


# -- the side and the pick ---------------------------------------------------------------------
def side_of(laterality: str, *texts: str) -> str | None:
    """``left`` / ``right`` from Laterality (or Image Laterality: ``L``/``R``), else from words
    in Body Part / descriptions; None when unknown or contradictory."""
    lat = laterality.strip().upper()
    if lat in ("L", "R"):
        return "left" if lat == "L" else "right"
    joined = " ".join(t.replace("_", " ") for t in texts)
    left, right = bool(_LEFT.search(joined)), bool(_RIGHT.search(joined))
    if left == right:
        return None
    return "left" if left else "right"


def candidate_summary(series: SeriesRecord, rules: Rules) -> dict[str, Any]:
    """A summary-shaped view of a C-FIND series match for :func:`workers.selection.select`.

    C-FIND gives no geometry: the instance count stands for the slice count; a single
    instance (an Enhanced MR object holds every frame) passes the count. The prior job's
    ``prepare`` stage checks the real geometry.
    """
    slices = series.instances if series.instances > 1 else rules.min_slices
    return {
        "modality": series.modality, "series_description": series.description,
        "protocol_name": series.protocol_name, "body_part_examined": series.body_part,
        "mr_acquisition_type": "", "geometry": {"slices": slices, "consistent": True},
    }


def pick_series(candidates: Sequence[SeriesRecord], side: str | None, rules: Rules,
                description: str = "") -> tuple[SeriesRecord | None, list[str]]:
    """The series of one study to retrieve, and why each other candidate was passed over.

    A candidate is kept when selection's rules accept it and its side is not the other knee
    (an unknown side on either is kept: the measured side decides in ``compare``). Among those:
    the same Series Description as the current series first, then the most instances.
    """
    kept: list[SeriesRecord] = []
    why: list[str] = []
    for s in candidates:
        decision = select(candidate_summary(s, rules), rules)
        if not decision.selected:
            why.append(f"{s.series_uid}: {decision.reason}")
            continue
        theirs = side_of(s.laterality, s.body_part, s.description, s.protocol_name)
        if side is not None and theirs is not None and theirs != side:
            why.append(f"{s.series_uid}: the {theirs} knee (current: {side})")
            continue
        kept.append(s)
    kept.sort(key=lambda s: (s.description.strip().upper() != description.strip().upper(),
                             -s.instances))
    return (kept[0] if kept else None), why


# -- redis: retrievals asked for ---------------------------------------------------------------
@dataclass(frozen=True)
class PendingRetrievals:
    """``prior:<series_uid>`` in redis: the current job that asked for a series (with a TTL),
    so the job creator knows an arriving series is a prior and of which job."""

    store: JobStore

    def put(self, series_uid: str, record: dict[str, Any], ttl_s: float) -> None:
        self.store.client.set(self.store.key("prior", series_uid), json.dumps(record),
                              ex=max(1, int(ttl_s)))

    def get(self, series_uid: str) -> dict[str, Any] | None:
        raw = self.store.client.get(self.store.key("prior", series_uid))
        return json.loads(raw) if raw else None


# -- the lookup ----------------------------------------------------------------------------------
@dataclass
class LookupOutcome:
    """What the lookup did: ``status`` (one of :data:`LOOKUP_STATES`), the DIMSE code of a
    failed step, a message, the series asked for and those the history already had."""

    status: str
    message: str = ""
    code: int | None = None
    requested: list[dict[str, Any]] = field(default_factory=list)
    in_history: list[dict[str, Any]] = field(default_factory=list)
    passed_over: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Current:
    """The current series: who, which knee, when (read from its first instance)."""

    patient_id: str
    issuer: str
    study_uid: str
    study_date: str
    side: str | None
    description: str


def read_current(series_path: Path) -> Current | None:
    """The identity of a spool version folder's series; None without a Patient ID."""
    import pydicom

    files = sorted(Path(series_path).glob("*.dcm"))
    if not files:
        return None
    ds = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=[
        "PatientID", "IssuerOfPatientID", "StudyInstanceUID", "StudyDate", "Laterality",
        "ImageLaterality", "BodyPartExamined", "SeriesDescription", "ProtocolName"])
    pid = str(ds.get("PatientID", "") or "").strip(" \x00")
    if not pid:
        return None
    text = [str(ds.get(k, "") or "") for k in ("BodyPartExamined", "SeriesDescription",
                                               "ProtocolName")]
    lat = str(ds.get("Laterality", "") or ds.get("ImageLaterality", "") or "")
    return Current(pid, str(ds.get("IssuerOfPatientID", "") or "").strip(" \x00"),
                   str(ds.get("StudyInstanceUID", "")), str(ds.get("StudyDate", "") or ""),
                   side_of(lat, *text), text[1])


def peer(priors: PriorsSettings, settings: Settings) -> PacsPeer:
    """The PACS of a route's priors settings as a query/retrieve peer."""
    target = target_of(priors.pacs)  # type: ignore[arg-type]  # validated: set when enabled
    return PacsPeer(target.destination, priors.calling_ae or settings.scp.ae_title, target.tls)


def _pacs_failure(status: PacsStatus) -> LookupOutcome:
    """A failed C-FIND: ``timeout``, else ``pacs_unreachable`` (the message says which)."""
    kind = "timeout" if status.state == "timeout" else "pacs_unreachable"
    return LookupOutcome(kind, status.message, status.code)


Known = Callable[[Current, SeriesRecord], bool]
Retrieve = Callable[[SeriesRecord], PacsStatus]


def lookup(priors: PriorsSettings, pacs: PacsPeer, current: Current, rules: Rules, *,
           known: Known, retrieve: Retrieve, ask: Callable[[SeriesRecord, StudyRecord], None]
           ) -> LookupOutcome:
    """Find, pick and retrieve the priors of ``current`` (bounded by ``priors``' limits).

    ``known(current, series)``: the history already holds this series measured with the job's
    model (no retrieval). ``ask(series, study)`` records the pending retrieval before
    ``retrieve(series)`` asks the PACS for it.
    """
    found = find_studies(pacs, patient_id=current.patient_id, issuer=current.issuer,
                         study_date=current.study_date, max_age_days=priors.max_age_days,
                         timeout=priors.find_timeout_s)
    if not found.status.ok:
        return _pacs_failure(found.status)
    out = LookupOutcome("no_prior", "no earlier MR study of this patient in the window")
    for study in (s for s in found.studies if s.study_uid != current.study_uid):
        if len(out.requested) + len(out.in_history) >= priors.max_priors:
            break
        listed = find_series(pacs, study, timeout=priors.find_timeout_s)
        if not listed.status.ok:
            failure = _pacs_failure(listed.status)
            if out.requested or out.in_history:  # keep what was found; say what failed
                out.message = f"study {study.study_uid}: {failure.message}"
                break
            return failure
        chosen, why = pick_series(listed.series, current.side, rules, current.description)
        out.passed_over.extend(why)
        if chosen is None:
            continue
        entry = {"study_uid": study.study_uid, "series_uid": chosen.series_uid,
                 "study_date": study.study_date}
        if known(current, chosen):
            out.in_history.append(entry)
            continue
        ask(chosen, study)
        status = retrieve(chosen)
        out.requested.append({**entry, "retrieve": status.as_dict()})
        if not status.ok:
            log.warning("prior retrieval failed", series_uid=chosen.series_uid,
                        state=status.state, code=status.code, message=status.message)
    if out.requested or out.in_history:
        failed = [r for r in out.requested if r["retrieve"]["state"] != "ok"]
        out.status = "found"
        out.message = (f"{len(out.requested)} retrieval(s) asked for, {len(failed)} failed; "
                       f"{len(out.in_history)} already in the history")
        if failed and len(failed) == len(out.requested) and not out.in_history:
            first = failed[0]["retrieve"]
            out.status = "timeout" if first["state"] == "timeout" else "prior_failed"
            out.message = first["message"]
            out.code = first["code"]
    elif out.passed_over:
        out.message = "no earlier series of the same knee that selection accepts"
    return out


def write_lookup(job_dir: Path, outcome: LookupOutcome) -> None:
    """``<job>/priors/lookup.json`` (atomic): what the ``compare`` stage waits for."""
    write_json_atomic(Path(job_dir) / PRIORS_DIR / LOOKUP_FILE, outcome.as_dict())


def read_lookup(job_dir: Path) -> dict[str, Any] | None:
    path = Path(job_dir) / PRIORS_DIR / LOOKUP_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def lookup_rules(settings: Settings, route: str) -> Rules:
    """The selection rules of the route named ``route`` (``default``: the default route), which
    a prior must pass like the current series did."""
    target: RouteTarget = next((r for r in settings.routes if r.name == route),
                               settings.default_route)
    return rules_for(settings.jobs.selection, target)


# -- prior jobs ----------------------------------------------------------------------------------
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


# -- the lookup message ------------------------------------------------------------------------
def lookup_time_limit_s(priors: PriorsSettings) -> float:
    """The longest a lookup may take: a C-FIND per study and one more, a retrieval per prior."""
    return (priors.find_timeout_s * (priors.max_priors + 2)
            + priors.retrieve_timeout_s * priors.max_priors + 30)


def _known(settings: Settings, model: str) -> Known:
    """Whether the history holds a series measured with ``model`` (history errors: no)."""
    def known(current: Current, series: SeriesRecord) -> bool:
        try:
            from kneenode.history import open_history

            with open_history(settings) as history:
                who = history.pseudonym(current.patient_id, current.issuer)
                sides = [current.side] if current.side else ["left", "right"]
                return any(e.series_uid == series.series_uid
                           for side in sides for e in history.exams(who, side, model))
        except Exception as exc:  # noqa: BLE001 - a broken history means: retrieve again
            log.warning("history not readable for the priors lookup", error=str(exc))
            return False
    return known


def _cget_writer(settings: Settings, pacs: PacsPeer) -> Callable[[Any], int]:
    """The EVT_C_STORE handler of a C-GET: each instance into the spool (the edge's completion
    monitor closes the series on its quiet timer, as for any sender)."""
    import uuid

    from scp.spool import SeriesKey, Spool, StoreOutcome

    spool = Spool(settings.spool_dir, fsync=settings.spool.fsync)
    source = {"calling_ae": pacs.destination.ae_title, "called_ae": pacs.calling_ae,
              "address": pacs.destination.host, "retrieved_by": "C-GET"}

    def on_instance(event: Any) -> int:
        try:
            ds = event.dataset
            tmp = spool.tmp / f"cget-{uuid.uuid4().hex}.dcm"
            tmp.write_bytes(event.encoded_dataset(include_meta=True))
            key = SeriesKey(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
            outcome, _ = spool.store(key, str(ds.SOPInstanceUID), tmp, source)
            if outcome is StoreOutcome.DUPLICATE:
                tmp.unlink(missing_ok=True)
            return 0x0000
        except Exception as exc:  # noqa: BLE001 - the boundary: a status, never a crash
            log.error("C-GET instance not stored", error=f"{type(exc).__name__}: {exc}")
            return 0xA701
    return on_instance


def run_lookup(settings: Settings, store: JobStore, job_id: str) -> LookupOutcome | None:
    """The lookup of one job (the io-queue message): its outcome in ``<job>/priors/lookup.json``,
    an event ``priors_lookup`` and the record field ``priors``. Never raises: any failure is an
    outcome the ``compare`` stage reports."""
    from scp.priors import get_series

    job = store.get(job_id)
    if not job or not job.get("config"):
        return None
    job_dir = Path(job["job_dir"])
    config = JobConfig.model_validate(job["config"])
    try:
        if config.priors is None:
            return None
        priors = PriorsSettings.model_validate(config.priors)
        pacs = peer(priors, settings)
        current = read_current(Path(job["series_path"]))
        if current is None:
            outcome = LookupOutcome("no_prior", "the series has no Patient ID: no lookup")
        else:
            from kneenode.history import model_key

            pending = PendingRetrievals(store)

            def ask(series: SeriesRecord, study: StudyRecord) -> None:
                pending.put(series.series_uid, {"job_id": job_id, "job_dir": str(job_dir),
                                                "study_uid": study.study_uid,
                                                "study_date": study.study_date},
                            priors.retrieve_timeout_s + priors.wait_s)

            def retrieve(series: SeriesRecord) -> PacsStatus:
                if priors.method == "get":
                    return get_series(pacs, series, on_instance=_cget_writer(settings, pacs),
                                      timeout=priors.retrieve_timeout_s)
                return move_series(pacs, series, timeout=priors.retrieve_timeout_s,
                                   move_destination=priors.move_destination
                                   or settings.scp.ae_title)

            model = model_key(config.models.get("segment") or {})
            outcome = lookup(priors, pacs, current, lookup_rules(settings, config.route),
                             known=_known(settings, model), retrieve=retrieve, ask=ask)
    except Exception as exc:
        log.exception("priors lookup failed", job_id=job_id)
        outcome = LookupOutcome("prior_failed", f"the lookup failed: {type(exc).__name__}: {exc}")
    write_lookup(job_dir, outcome)
    store.update(job_id, priors={"status": outcome.status, "message": outcome.message,
                                 "requested": len(outcome.requested),
                                 "in_history": len(outcome.in_history)})
    store.event(job_id, "priors_lookup", status=outcome.status, message=outcome.message,
                code=outcome.code, requested=[r["series_uid"] for r in outcome.requested],
                in_history=[r["series_uid"] for r in outcome.in_history])
    log.info("priors lookup", job_id=job_id, status=outcome.status,
             requested=len(outcome.requested), in_history=len(outcome.in_history))
    return outcome


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
    import time

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

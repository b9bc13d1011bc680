"""Priors from PACS: find a patient's earlier knee series and retrieve them, so that they are
measured like the current job and the ``compare`` stage can report the change (docs/priors.md).

The lookup runs as its own message on the io queue (``priors_lookup``), sent when a job of a
route with ``priors.enabled`` is created, so it runs while the current series is segmented. It
C-FINDs the route's PACS (study level: same Patient ID + Issuer, MR, dates in the window; series
level: the candidates), picks per study the series of the same knee that the route's selection
rules accept, leaves out what the history already holds measured with the job's model, records
each retrieval it asks for in redis (:class:`PendingRetrievals`) and C-MOVEs (or C-GETs) it.
Its outcome goes to ``<job>/priors/lookup.json``. A retrieved series arrives by C-STORE like any
other; the job creator finds its pending record and makes it a prior job
(:mod:`workers.priorjobs`).
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
from workers.jobconfig import JobConfig
from workers.jobstate import JobStore
from workers.priorjobs import LOOKUP_FILE, PRIORS_DIR
from workers.selection import Rules, rules_for, select

log = get_logger(__name__)

#: Stages a prior job leaves out: it is only measured and recorded, never encoded or sent.
#: Lookup outcomes (``status`` of lookup.json): ``found`` (retrievals asked for, or the history
#: already held the priors), ``no_prior``, ``pacs_unreachable`` (no association, refused, or a
#: C-FIND answered with an error status), ``timeout`` (a step past its time limit),
#: ``prior_failed`` (every retrieval failed, or the lookup itself failed).
LOOKUP_STATES = ("found", "no_prior", "pacs_unreachable", "timeout", "prior_failed")

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


def lookup_rules(settings: Settings, route: str) -> Rules:
    """The selection rules of the route named ``route`` (``default``: the default route), which
    a prior must pass like the current series did."""
    target: RouteTarget = next((r for r in settings.routes if r.name == route),
                               settings.default_route)
    return rules_for(settings.jobs.selection, target)


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

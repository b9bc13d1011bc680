"""Query/retrieve SCU for priors: C-FIND a PACS for a patient's earlier studies and series, and
C-MOVE or C-GET one series to the node.

Every call is bounded (connect, negotiation, each answer and the whole exchange are limited by
the step's time limit) and never raises for peer problems: it returns a :class:`PacsStatus`
value (``ok``, ``unreachable``, ``refused``, ``timeout``, ``failed``) with the DIMSE status
code when the PACS answered one, so the caller can report why a comparison is missing.
Identity is the Patient ID with its Issuer, never the name: matches the PACS returns for
another ID or issuer are dropped here as well.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Literal

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from scp.sender import Destination

State = Literal["ok", "unreachable", "refused", "timeout", "failed"]
_PENDING = (0xFF00, 0xFF01)
#: Enhanced MR Image Storage, Enhanced MR Color, Legacy Converted Enhanced MR (C-GET roles).
_ENHANCED_MR = ("1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.3",
                "1.2.840.10008.5.1.4.1.1.4.4")


@dataclass(frozen=True)
class PacsStatus:
    """The outcome of one query/retrieve step: a state, the DIMSE status code and why."""

    state: State
    code: int | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "code": self.code, "message": self.message}


@dataclass(frozen=True)
class PacsPeer:
    """The PACS to ask, our AE title, and the TLS context (None: plain TCP)."""

    destination: Destination
    calling_ae: str
    tls: ssl.SSLContext | None = None


@dataclass(frozen=True)
class StudyRecord:
    """One study a C-FIND found."""

    study_uid: str
    study_date: str
    patient_id: str
    issuer: str
    modalities: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class SeriesRecord:
    """One series of a study a C-FIND found (what selection and the side check look at)."""

    study_uid: str
    series_uid: str
    modality: str
    description: str
    protocol_name: str
    body_part: str
    laterality: str
    instances: int
    sop_class_uid: str = ""


@dataclass
class Found:
    """The answer of a C-FIND: the status and the matches (empty unless ok)."""

    status: PacsStatus
    studies: list[StudyRecord] = field(default_factory=list)
    series: list[SeriesRecord] = field(default_factory=list)


def _text(ds: Dataset, name: str) -> str:
    value = ds.get(name, "")
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value or "").strip()


def _ae(peer: PacsPeer, timeout: float) -> AE:
    ae = AE(ae_title=peer.calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def _associate(ae: AE, peer: PacsPeer, **kwargs: Any) -> tuple[Association | None, PacsStatus]:
    dest = peer.destination
    tls_args = (peer.tls, None) if peer.tls is not None else None
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title,
                         tls_args=tls_args, **kwargs)  # type: ignore[arg-type]
    if assoc.is_established:
        return assoc, PacsStatus("ok")
    if assoc.is_rejected:
        return None, PacsStatus("refused", None, f"{dest} rejected the association")
    return None, PacsStatus("unreachable", None, f"no association with {dest} (nothing "
                            "listening, aborted, or no answer in time)")


def _responses(responses: Iterator[tuple[Dataset, Dataset | None]], deadline: float,
               what: str) -> Iterator[tuple[int, Dataset | None]]:
    """Status codes and identifiers of a DIMSE exchange; raises :class:`_Stop` on a missing
    answer (pynetdicom's DIMSE timeout) or when the step's deadline has passed."""
    for status, identifier in responses:
        if "Status" not in status:
            raise _Stop(PacsStatus("timeout", None, f"{what}: no answer in time"))
        yield int(status.Status), identifier
        if time.monotonic() > deadline:
            raise _Stop(PacsStatus("timeout", None, f"{what}: past its time limit"))


class _Stop(Exception):
    def __init__(self, status: PacsStatus) -> None:
        super().__init__(status.message)
        self.status = status


def _find(peer: PacsPeer, query: Dataset, timeout: float, what: str) -> tuple[PacsStatus,
                                                                              list[Dataset]]:
    ae = _ae(peer, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    deadline = time.monotonic() + timeout
    assoc, status = _associate(ae, peer)
    if assoc is None:
        return status, []
    matches: list[Dataset] = []
    try:
        for code, identifier in _responses(
                assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind),
                deadline, what):
            if code in _PENDING:
                if identifier is not None:
                    matches.append(identifier)
            elif code == 0x0000:
                return PacsStatus("ok", code), matches
            else:
                return PacsStatus("failed", code, f"{what}: the PACS answered 0x{code:04X}"), []
        return PacsStatus("timeout", None, f"{what}: the association ended without a final "
                          "status"), []
    except _Stop as stop:
        assoc.abort()
        return stop.status, []
    finally:
        if assoc.is_established:
            assoc.release()


def study_window(current: str, max_age_days: float) -> str:
    """The StudyDate range of earlier studies: from ``max_age_days`` before ``current`` to the
    day before it (``YYYYMMDD-YYYYMMDD``); an unknown current date looks back from today."""
    try:
        day = date(int(current[:4]), int(current[4:6]), int(current[6:8]))
    except (ValueError, IndexError):
        day = date.today() + timedelta(days=1)
    first = day - timedelta(days=int(max_age_days))
    return f"{first:%Y%m%d}-{day - timedelta(days=1):%Y%m%d}"


def find_studies(peer: PacsPeer, *, patient_id: str, issuer: str, study_date: str,
                 max_age_days: float, timeout: float) -> Found:
    """Earlier MR studies of one patient (Patient ID + Issuer), newest first.

    Matches for another Patient ID, or another issuer when both are known, are dropped: two
    patients with the same name are never mixed.
    """
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.PatientID = patient_id
    q.IssuerOfPatientID = ""
    q.StudyInstanceUID = ""
    q.StudyDate = study_window(study_date, max_age_days)
    q.ModalitiesInStudy = "MR"
    q.StudyDescription = ""
    status, found = _find(peer, q, timeout, "C-FIND studies")
    if not status.ok:
        return Found(status)
    studies = []
    for ds in found:
        record = StudyRecord(
            study_uid=_text(ds, "StudyInstanceUID"), study_date=_text(ds, "StudyDate"),
            patient_id=_text(ds, "PatientID"), issuer=_text(ds, "IssuerOfPatientID"),
            modalities=tuple(m for m in _text(ds, "ModalitiesInStudy").split("\\") if m),
            description=_text(ds, "StudyDescription"))
        if record.patient_id != patient_id or (issuer and record.issuer
                                               and record.issuer != issuer):
            continue
        if record.modalities and "MR" not in record.modalities:
            continue
        if record.study_uid:
            studies.append(record)
    studies.sort(key=lambda s: s.study_date, reverse=True)
    return Found(status, studies=studies)


def find_series(peer: PacsPeer, study: StudyRecord, *, timeout: float) -> Found:
    """The MR series of one study, with what selection and the side check need."""
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = study.study_uid
    q.SeriesInstanceUID = ""
    q.Modality = "MR"
    for name in ("SeriesDescription", "ProtocolName", "BodyPartExamined", "Laterality",
                 "SeriesNumber", "NumberOfSeriesRelatedInstances"):
        setattr(q, name, "")
    status, found = _find(peer, q, timeout, "C-FIND series")
    if not status.ok:
        return Found(status)
    series = []
    for ds in found:
        try:
            count = int(_text(ds, "NumberOfSeriesRelatedInstances") or 0)
        except ValueError:
            count = 0
        uid = _text(ds, "SeriesInstanceUID")
        if uid and _text(ds, "Modality").upper() in ("MR", ""):
            series.append(SeriesRecord(
                study_uid=study.study_uid, series_uid=uid, modality=_text(ds, "Modality") or "MR",
                description=_text(ds, "SeriesDescription"),
                protocol_name=_text(ds, "ProtocolName"), body_part=_text(ds, "BodyPartExamined"),
                laterality=_text(ds, "Laterality"), instances=count))
    return Found(status, series=series)


def _retrieve_query(series: SeriesRecord) -> Dataset:
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = series.study_uid
    q.SeriesInstanceUID = series.series_uid
    return q


def _final(code: int, identifier: Dataset | None, what: str) -> PacsStatus:
    if code == 0x0000:
        return PacsStatus("ok", code)
    failed = int(identifier.get("NumberOfFailedSuboperations", 0) or 0) if identifier else 0
    if 0xB000 <= code <= 0xBFFF:
        return PacsStatus("failed", code, f"{what}: {failed} instance(s) not sent (0x{code:04X})")
    return PacsStatus("failed", code, f"{what}: the PACS answered 0x{code:04X}")


def _await_final(assoc: Association, send: Callable[[], Iterator[tuple[Dataset, Dataset | None]]],
                 deadline: float, what: str) -> PacsStatus:
    """Run a C-MOVE / C-GET on ``assoc`` until its final status (or the deadline); releases
    or aborts the association."""
    try:
        for code, identifier in _responses(send(), deadline, what):
            if code not in _PENDING:
                return _final(code, identifier, what)
        return PacsStatus("timeout", None, f"{what}: the association ended without a final "
                          "status")
    except _Stop as stop:
        assoc.abort()
        return stop.status
    finally:
        if assoc.is_established:
            assoc.release()


def move_series(peer: PacsPeer, series: SeriesRecord, *, move_destination: str,
                timeout: float) -> PacsStatus:
    """C-MOVE one series to ``move_destination`` (the node); waits for the final status."""
    ae = _ae(peer, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    deadline = time.monotonic() + timeout
    assoc, status = _associate(ae, peer)
    if assoc is None:
        return status
    return _await_final(assoc, lambda: assoc.send_c_move(
        _retrieve_query(series), move_destination, StudyRootQueryRetrieveInformationModelMove),
        deadline, "C-MOVE")


OnInstance = Callable[[Any], int]


def get_series(peer: PacsPeer, series: SeriesRecord, *, on_instance: OnInstance,
               timeout: float) -> PacsStatus:
    """C-GET one series; each instance is handed to ``on_instance(event)`` (EVT_C_STORE on our
    own association), which stores it and returns the C-STORE status."""
    ae = _ae(peer, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    storage = [MRImageStorage, *_ENHANCED_MR]  # a prior is an MR series: only MR storage
    for uid in storage:
        ae.add_requested_context(uid)
    roles = [build_role(uid, scp_role=True) for uid in storage]
    deadline = time.monotonic() + timeout
    assoc, status = _associate(ae, peer, ext_neg=roles,
                               evt_handlers=[(evt.EVT_C_STORE, on_instance)])
    if assoc is None:
        return status
    return _await_final(assoc, lambda: assoc.send_c_get(
        _retrieve_query(series), StudyRootQueryRetrieveInformationModelGet), deadline, "C-GET")

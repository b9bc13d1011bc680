"""pynetdicom event handlers of the Storage SCP: access control, C-ECHO, C-STORE.

Handlers are bound with their dependencies (``evt_handlers=[(evt.EVT_C_STORE, handle_store,
[spool, settings])]``); they only check, write and record. No analysis runs in the network thread.
Every exception becomes a wire status here and nowhere else.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_partial
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import events

from kneenode.logs import get_logger
from kneenode.settings import Settings
from scp import edgehealth, metrics
from scp.access import check_association
from scp.connections import REJECT_LOCAL_LIMIT, ConnectionGuard, connection_of
from scp.receive import ReceiveRegistry, dataset_offset, inflate
from scp.spool import SeriesKey, Spool, StoreOutcome, is_valid_uid
from scp.status import StoreStatus

log = get_logger(__name__)

_HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]
_HEADER_TAG_NUMBERS = [0x00080016, 0x00080018, 0x0020000D, 0x0020000E]
_LAST_HEADER_TAG = max(_HEADER_TAG_NUMBERS)
_INFLATED_HEADER = 4 * 1024**2  # inflated bytes kept to read a deflated instance's header


def _past_identifiers(tag: Any, vr: Any, length: int) -> bool:
    """Stop parsing once past Series Instance UID: the rest of the header is not needed here."""
    return int(tag) > _LAST_HEADER_TAG


def handle_requested(event: events.Event, settings: Settings,
                     guard: ConnectionGuard | None = None) -> None:
    """EVT_REQUESTED: reject before negotiation (A-ASSOCIATE-RJ, sent at once).

    Unknown peers: permanent. A proposal pynetdicom cannot negotiate (a presentation context
    without a transfer syntax): permanent. Over ``scp.max_associations[_per_address]``
    (counted by ``guard``): transient, local limit exceeded.
    """
    requestor = event.assoc.requestor
    calling = _ae_str(requestor.primitive.calling_ae_title if requestor.primitive else "")
    called = _ae_str(requestor.primitive.called_ae_title if requestor.primitive else "")
    decision = check_association(
        settings, calling_ae=calling, called_ae=called, address=requestor.address
    )
    if not decision.allowed:
        _reject(event, (0x01, 0x01, int(decision.diagnostic)), calling, decision.reason, called)
        return
    malformed = malformed_proposal(requestor.primitive)
    if malformed:
        _reject(event, (0x01, 0x02, 0x01), calling, malformed)
        return
    conn = connection_of(event.assoc) if guard is not None else None
    if guard is not None and conn is not None:
        full = guard.admit(conn)
        if full:
            _reject(event, REJECT_LOCAL_LIMIT, calling, full)
            return
    log.info("association accepted", calling_ae=calling, called_ae=called,
             peer=requestor.address, rule=decision.reason)


def _reject(event: events.Event, rsd: tuple[int, int, int], calling: str, reason: str,
            called: str = "") -> None:
    metrics.ASSOCIATIONS_REJECTED.inc()
    log.warning("association rejected", calling_ae=calling, called_ae=called,
                peer=event.assoc.requestor.address, reason=reason)
    event.assoc.acse.send_reject(*rsd)
    event.assoc.kill()  # as pynetdicom's own rejections do: flushes the A-ASSOCIATE-RJ


def malformed_proposal(primitive: Any) -> str:
    """Why pynetdicom's negotiation would fail on this A-ASSOCIATE-RQ ("" when it would not).

    pynetdicom 3.0's acceptor negotiation raises IndexError on a presentation context without a
    transfer syntax, in the association thread, and the peer then hears nothing.
    """
    contexts = getattr(primitive, "presentation_context_definition_list", None) or []
    for cx in contexts:
        if not cx.transfer_syntax:
            return f"presentation context {cx.context_id} proposes no transfer syntax"
        if not cx.abstract_syntax:
            return f"presentation context {cx.context_id} has no abstract syntax"
    return ""


def handle_echo(event: events.Event) -> int:
    """C-ECHO: always Success (0x0000) for an accepted association."""
    return 0x0000


OnStored = Callable[[events.Event, SeriesKey], None]


def handle_store(event: events.Event, spool: Spool, settings: Settings,
                 on_stored: OnStored | None = None,
                 registry: ReceiveRegistry | None = None) -> int:
    """C-STORE: spool the instance as received, durably, then answer.

    ``on_stored(event, key)`` is told of each spooled instance's series (the release-time
    completion of :mod:`scp.early` needs to know which series an association carried).

    Statuses (see :class:`scp.status.StoreStatus`):

    - ``0x0000`` Success: written through temp + fsync + rename (or identical copy already there).
    - ``0xA700`` Out of Resources: free disk below the watermark; nothing written.
    - ``0xA701`` Out of Resources: a write failed (receiving or spooling); nothing kept.
    - ``0xA702`` Out of Resources: larger than ``scp.max_instance_bytes``; nothing kept.
    - ``0x0117`` Invalid SOP Instance: UID missing/malformed or not the one in the request.
    - ``0xA900`` Dataset does not match SOP Class: SOP Class UID differs from the request's.
    - ``0xC210`` Cannot Understand: the dataset cannot be decoded.
    - ``0xC212`` Cannot Understand: Study/Series Instance UID missing or malformed.
    - ``0xC211`` Processing failure: unexpected error (logged); the association stays usable.
    """
    request: Any = event.request
    sop_uid = str(request.AffectedSOPInstanceUID or "")
    blog = log.bind(sop_instance_uid=sop_uid, calling_ae=_calling_ae(event))
    try:
        return _store(event, spool, settings, blog, on_stored, registry)
    except Exception:  # noqa: BLE001 - the boundary: every error becomes a status
        blog.exception("unexpected error storing instance")
        metrics.INSTANCES_FAILED.labels(reason="processing_failure").inc()
        return StoreStatus.PROCESSING_FAILURE


def _store(event: events.Event, spool: Spool, settings: Settings, blog: Any,
           on_stored: OnStored | None = None, registry: ReceiveRegistry | None = None) -> int:
    request = event.request
    received = Path(event.dataset_path)
    refused, inflated = _check_received(event, received, registry, settings, blog)
    if refused is not None:
        received.unlink(missing_ok=True)
        return refused
    if not spool.has_room(settings.spool.min_free_bytes, settings.spool.min_free_percent):
        blog.error("spool below free-space watermark, refusing instance", spool=str(spool.root))
        metrics.INSTANCES_FAILED.labels(reason="out_of_resources").inc()
        return StoreStatus.OUT_OF_RESOURCES
    header, problem = read_header(received) if inflated is None else _read_inflated(inflated)
    if header is None:
        blog.warning("undecodable dataset", reason=problem)
        metrics.INSTANCES_FAILED.labels(reason="cannot_understand").inc()
        return StoreStatus.CANNOT_UNDERSTAND
    status, reason = _check_identifiers(header, request)
    if status is not StoreStatus.SUCCESS:
        blog.warning("instance refused", status=f"0x{int(status):04X}", reason=reason)
        metrics.INSTANCES_FAILED.labels(reason=status.name.lower()).inc()
        return status
    key = SeriesKey(str(header.StudyInstanceUID), str(header.SeriesInstanceUID))
    blog = blog.bind(study_uid=key.study_uid, series_uid=key.series_uid)
    source = {
        "calling_ae": _calling_ae(event),
        "called_ae": _called_ae(event),
        "address": event.assoc.requestor.address,
    }
    try:
        outcome, _ = spool.store(key, str(header.SOPInstanceUID), received, source)
    except OSError as exc:
        blog.error("spool write failed", error=str(exc))
        edgehealth.record_write_failure(f"{type(exc).__name__}: {exc}")
        metrics.INSTANCES_FAILED.labels(reason="write_failed").inc()
        return StoreStatus.OUT_OF_RESOURCES_WRITE
    metrics.INSTANCES_RECEIVED.labels(outcome=outcome.value).inc()
    if on_stored is not None:
        on_stored(event, key)
    if outcome is StoreOutcome.REPLACED:
        blog.warning("same SOP Instance UID with different bytes: both kept, newest used")
    elif outcome is StoreOutcome.DUPLICATE:
        blog.info("identical duplicate acknowledged, nothing rewritten")
    else:
        blog.debug("instance stored")
    return StoreStatus.SUCCESS


def _check_received(event: events.Event, received: Path, registry: ReceiveRegistry | None,
                    settings: Settings, blog: Any) -> tuple[StoreStatus | None, bytes | None]:
    """Refuse what could not be received whole; for deflate, the inflated header bytes.

    Returns (status to answer or None, the first bytes of the inflated data set or None).
    """
    limit = settings.scp.max_instance_bytes
    rf = registry.lookup(received) if registry is not None else None
    if rf is not None and rf.error:
        blog.error("write failed while receiving, refusing instance", error=rf.error)
        metrics.INSTANCES_FAILED.labels(reason="write_failed").inc()
        return StoreStatus.OUT_OF_RESOURCES_WRITE, None
    if rf is not None and rf.too_large:
        blog.warning("instance over scp.max_instance_bytes, refusing it", limit=limit)
        metrics.INSTANCES_FAILED.labels(reason="too_large").inc()
        return StoreStatus.TOO_LARGE, None
    if str(event.context.transfer_syntax) != DeflatedExplicitVRLittleEndian:
        return None, None
    try:
        size, prefix = inflate(received, dataset_offset(received), limit, keep=_INFLATED_HEADER)
    except (ValueError, zlib.error, OSError) as exc:
        blog.warning("undecodable deflated dataset", reason=f"{type(exc).__name__}: {exc}")
        metrics.INSTANCES_FAILED.labels(reason="cannot_understand").inc()
        return StoreStatus.CANNOT_UNDERSTAND, None
    if size > limit:
        blog.warning("deflated instance inflates past scp.max_instance_bytes, refusing it",
                     limit=limit, compressed=received.stat().st_size)
        metrics.INSTANCES_FAILED.labels(reason="too_large").inc()
        return StoreStatus.TOO_LARGE, None
    return None, prefix


def _read_inflated(prefix: bytes) -> tuple[Any, str]:
    """Decode the header from the first inflated bytes of a deflated data set."""
    try:
        ds = read_dataset(BytesIO(prefix), False, True, stop_when=_past_identifiers,
                          defer_size=4096, specific_tags=_HEADER_TAG_NUMBERS)
        for tag in _HEADER_TAGS:
            getattr(ds, tag, None)
        return ds, ""
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "cannot understand"
        return None, f"{type(exc).__name__}: {exc}"


def read_header(path: Path) -> tuple[Any, str]:
    """Decode the identifying header (SOP class and instance, Study and Series UIDs; no pixel
    data) of a received or uploaded file: (dataset, "") or (None, why it cannot be decoded)."""
    try:
        with open(path, "rb") as fh:
            ds = read_partial(fh, stop_when=_past_identifiers, defer_size=4096,
                              specific_tags=_HEADER_TAG_NUMBERS)
        for tag in _HEADER_TAGS:  # force decoding of the elements we rely on
            getattr(ds, tag, None)
        return ds, ""
    except (InvalidDicomError, ValueError, KeyError, EOFError, OSError, TypeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - any decoder failure means "cannot understand"
        return None, f"{type(exc).__name__}: {exc}"


def _check_identifiers(header: Any, request: Any) -> tuple[StoreStatus, str]:
    sop_uid = str(getattr(header, "SOPInstanceUID", "") or "")
    if not is_valid_uid(sop_uid):
        return StoreStatus.INVALID_SOP_INSTANCE, f"SOP Instance UID missing or malformed: {sop_uid!r}"
    if sop_uid != str(request.AffectedSOPInstanceUID):
        return StoreStatus.INVALID_SOP_INSTANCE, "SOP Instance UID differs from the request's"
    sop_class = str(getattr(header, "SOPClassUID", "") or "")
    if sop_class and sop_class != str(request.AffectedSOPClassUID):
        return StoreStatus.DATASET_SOP_CLASS_MISMATCH, "SOP Class UID differs from the request's"
    for name in ("StudyInstanceUID", "SeriesInstanceUID"):
        value = str(getattr(header, name, "") or "")
        if not is_valid_uid(value):
            return StoreStatus.MISSING_IDENTIFIERS, f"{name} missing or malformed: {value!r}"
    return StoreStatus.SUCCESS, ""


def _calling_ae(event: events.Event) -> str:
    return _ae_str(event.assoc.requestor.ae_title)


def _called_ae(event: events.Event) -> str:
    """The AE title the peer called (one of the node's virtual AEs), not our own title."""
    primitive = event.assoc.requestor.primitive
    return _ae_str(primitive.called_ae_title if primitive else event.assoc.acceptor.ae_title)


def _ae_str(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return str(value or "").strip()

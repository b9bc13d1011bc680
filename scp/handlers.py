"""pynetdicom event handlers of the Storage SCP: access control, C-ECHO, C-STORE.

Handlers are bound with their dependencies (``evt_handlers=[(evt.EVT_C_STORE, handle_store,
[spool, settings])]``); they only check, write and record. No analysis runs in the network thread.
Every exception becomes a wire status here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pynetdicom import events

from kneenode.logs import get_logger
from kneenode.settings import Settings
from scp import metrics
from scp.access import check_association
from scp.spool import SeriesKey, Spool, StoreOutcome, is_valid_uid
from scp.status import StoreStatus

log = get_logger(__name__)

_HEADER_TAGS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]
_HEADER_TAG_NUMBERS = [0x00080016, 0x00080018, 0x0020000D, 0x0020000E]
_LAST_HEADER_TAG = max(_HEADER_TAG_NUMBERS)


def _past_identifiers(tag: Any, vr: Any, length: int) -> bool:
    """Stop parsing once past Series Instance UID: the rest of the header is not needed here."""
    return int(tag) > _LAST_HEADER_TAG


def handle_requested(event: events.Event, settings: Settings) -> None:
    """EVT_REQUESTED: reject unknown peers before negotiation (A-ASSOCIATE-RJ, permanent)."""
    requestor = event.assoc.requestor
    calling = _ae_str(requestor.primitive.calling_ae_title if requestor.primitive else "")
    called = _ae_str(requestor.primitive.called_ae_title if requestor.primitive else "")
    decision = check_association(
        settings.scp, calling_ae=calling, called_ae=called, address=requestor.address
    )
    if not decision.allowed:
        metrics.ASSOCIATIONS_REJECTED.inc()
        log.warning("association rejected", calling_ae=calling, peer=requestor.address,
                    reason=decision.reason)
        event.assoc.acse.send_reject(0x01, 0x01, int(decision.diagnostic))
        event.assoc.kill()  # as pynetdicom's own rejections do: flushes the A-ASSOCIATE-RJ
        return
    log.info("association accepted", calling_ae=calling, peer=requestor.address,
             rule=decision.reason)


def handle_echo(event: events.Event) -> int:
    """C-ECHO: always Success (0x0000) for an accepted association."""
    return 0x0000


OnStored = Callable[[events.Event, SeriesKey], None]


def handle_store(event: events.Event, spool: Spool, settings: Settings,
                 on_stored: OnStored | None = None) -> int:
    """C-STORE: spool the instance as received, durably, then answer.

    ``on_stored(event, key)`` is told of each spooled instance's series (the release-time
    completion of :mod:`scp.early` needs to know which series an association carried).

    Statuses (see :class:`scp.status.StoreStatus`):

    - ``0x0000`` Success: written through temp + fsync + rename (or identical copy already there).
    - ``0xA700`` Out of Resources: free disk below the watermark; nothing written.
    - ``0xA701`` Out of Resources: the write to the spool failed; nothing kept.
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
        return _store(event, spool, settings, blog, on_stored)
    except Exception:  # noqa: BLE001 - the boundary: every error becomes a status
        blog.exception("unexpected error storing instance")
        metrics.INSTANCES_FAILED.labels(reason="processing_failure").inc()
        return StoreStatus.PROCESSING_FAILURE


def _store(event: events.Event, spool: Spool, settings: Settings, blog: Any,
           on_stored: OnStored | None = None) -> int:
    request = event.request
    if not spool.has_room(settings.spool.min_free_bytes, settings.spool.min_free_percent):
        blog.error("spool below free-space watermark, refusing instance", spool=str(spool.root))
        metrics.INSTANCES_FAILED.labels(reason="out_of_resources").inc()
        return StoreStatus.OUT_OF_RESOURCES
    received = Path(event.dataset_path)
    header, problem = _read_header(received)
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
        "called_ae": _ae_str(event.assoc.acceptor.ae_title),
        "address": event.assoc.requestor.address,
    }
    try:
        outcome, _ = spool.store(key, str(header.SOPInstanceUID), received, source)
    except OSError as exc:
        blog.error("spool write failed", error=str(exc))
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


def _read_header(path: Path) -> tuple[Any, str]:
    """Decode the header (no pixel data); return (dataset, "") or (None, reason)."""
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


def _ae_str(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    return str(value or "").strip()

"""The DIMSE statuses the Storage SCP answers with, and why (the wire contract)."""

from __future__ import annotations

from enum import IntEnum


class StoreStatus(IntEnum):
    """C-STORE response statuses sent by :func:`scp.handlers.handle_store`."""

    SUCCESS = 0x0000
    """Stored durably (or an identical copy was already stored)."""
    OUT_OF_RESOURCES = 0xA700
    """Free disk below the spool watermark: nothing was written; retry later."""
    OUT_OF_RESOURCES_WRITE = 0xA701
    """Writing to the spool failed (ENOSPC, I/O error), while receiving or after: nothing was
    kept; retry later."""
    TOO_LARGE = 0xA702
    """The instance is larger than ``scp.max_instance_bytes`` (inflated, for deflate): not kept."""
    INVALID_SOP_INSTANCE = 0x0117
    """The dataset's SOP Instance UID is missing, malformed or differs from the request's."""
    DATASET_SOP_CLASS_MISMATCH = 0xA900
    """The dataset's SOP Class UID differs from the one in the C-STORE request."""
    CANNOT_UNDERSTAND = 0xC210
    """The dataset cannot be decoded (malformed encoding)."""
    MISSING_IDENTIFIERS = 0xC212
    """Study or Series Instance UID missing or malformed: the instance cannot be filed."""
    PROCESSING_FAILURE = 0xC211
    """An unexpected error in the node (logged with a traceback); the association stays up."""


class RejectReason(IntEnum):
    """A-ASSOCIATE-RJ diagnostics (source: service user) used by access control."""

    NO_REASON = 0x01
    CALLING_AE_NOT_RECOGNISED = 0x03
    CALLED_AE_NOT_RECOGNISED = 0x07

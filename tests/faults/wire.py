"""Raw DICOM Upper Layer bytes for fault tests: PDUs built by hand, so they can be wrong.

Only what the fault tests need: an A-ASSOCIATE-RQ (with any presentation contexts, even ones
without a transfer syntax), P-DATA-TF with one PDV, a C-STORE-RQ command set, and a blocking
reader for the PDU the node answers with.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.9.7433.1.1"


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def _uid(item_type: int, uid: str) -> bytes:
    return _item(item_type, uid.encode("ascii"))


def pdu(pdu_type: int, payload: bytes, declared: int | None = None) -> bytes:
    """A PDU; ``declared`` overrides the length field (to lie about it)."""
    length = len(payload) if declared is None else declared
    return struct.pack(">BBL", pdu_type, 0, length) + payload


def associate_rq(contexts: Sequence[tuple[int, str, Sequence[str]]], *, calling: str = "FAULTS",
                 called: str = "KNEENODE", max_pdu: int = 16384) -> bytes:
    """A-ASSOCIATE-RQ proposing ``contexts`` as (id, abstract syntax, transfer syntaxes)."""
    items = _uid(0x10, APPLICATION_CONTEXT)
    for cx_id, abstract, syntaxes in contexts:
        sub = _uid(0x30, abstract) + b"".join(_uid(0x40, ts) for ts in syntaxes)
        items += _item(0x20, struct.pack(">BBBB", cx_id, 0, 0, 0) + sub)
    user = _item(0x51, struct.pack(">L", max_pdu)) + _uid(0x52, IMPLEMENTATION_UID)
    items += _item(0x50, user)
    head = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode()
    return pdu(0x01, head + b"\x00" * 32 + items)


def p_data(context_id: int, control: int, fragment: bytes) -> bytes:
    """P-DATA-TF with one PDV (control: 0x03 last command fragment, 0x02 last data fragment)."""
    pdv = struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment
    return pdu(0x04, pdv)


def command_set(ds: Dataset) -> bytes:
    """Encode a DIMSE command set (implicit VR little endian) with its group length."""
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, True
    write_dataset(body, ds)
    raw = body.getvalue()
    group_length = struct.pack("<HHLL", 0x0000, 0x0000, 4, len(raw))
    return group_length + raw


def c_store_rq(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """The command set of a C-STORE-RQ (a data set follows)."""
    ds = Dataset()
    ds.AffectedSOPClassUID = sop_class
    ds.CommandField = 0x0001
    ds.MessageID = message_id
    ds.Priority = 0
    ds.CommandDataSetType = 0x0000
    ds.AffectedSOPInstanceUID = sop_instance
    return command_set(ds)


def connect(port: int, source: str = "127.0.0.1", timeout: float = 30) -> socket.socket:
    """A TCP connection to the node from a loopback ``source`` address."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                    source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_pdu(sock: socket.socket, timeout: float = 30) -> tuple[int, bytes] | None:
    """The next PDU as (type, payload); None when the node closed the connection."""
    sock.settimeout(timeout)
    head = _read_exactly(sock, 6)
    if head is None:
        return None
    pdu_type, _, length = struct.unpack(">BBL", head)
    body = _read_exactly(sock, length)
    return None if body is None else (pdu_type, body)


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    out = b""
    while len(out) < n:
        try:
            chunk = sock.recv(n - len(out))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        out += chunk
    return out


def answer_after(sock: socket.socket, timeout: float = 30) -> tuple[float, tuple[int, bytes] | None]:
    """Seconds until the node answered (a PDU or a close), and the PDU (None = closed)."""
    t0 = time.monotonic()
    got = read_pdu(sock, timeout)
    return time.monotonic() - t0, got


def store_status(payload: bytes) -> int | None:
    """The Status (0000,0900) of a C-STORE-RSP command carried in a P-DATA-TF payload."""
    idx = payload.find(b"\x00\x00\x00\x09\x02\x00\x00\x00")
    if idx < 0:
        return None
    return int(struct.unpack("<H", payload[idx + 8: idx + 10])[0])

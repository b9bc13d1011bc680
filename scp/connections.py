"""Connections cannot starve the edge: deadlines, caps and a bound on declared PDU lengths.

Why pynetdicom's own timeouts are not enough (pynetdicom 3.0): the accepted socket is blocking
with no timeout (Python's ``accept()`` does not pass the listening socket's timeout on), and the
DUL thread reads a PDU with ``recv(6)`` then ``recv(length)``, looping until every byte is there.
Its ARTIM, ACSE and idle timers are only looked at between PDUs, by that same thread, and the
association thread's ACSE wait ends in ``kill()``, which waits for that thread. So a peer that
sends part of a PDU and goes quiet holds the connection, and its association slot, for as long
as it likes (upstream: pydicom/pynetdicom#272, blocking ``recv`` in the DUL). A declared length
is trusted too: a P-DATA-TF declaring 4 GB is read into memory as it comes.

Here, from our side of the socket:

- :class:`GuardedSocket` (the association's transport) reads every PDU against a deadline:
  ``scp.negotiation_timeout`` from the TCP connect until the A-ASSOCIATE-RQ is complete (also
  for a connection that sends nothing), then ``scp.pdu_timeout`` from a PDU's first byte to its
  last. A missed deadline or a declared length over ``scp.max_declared_pdu`` is answered with
  A-ABORT and the connection closes. Sends get ``scp.pdu_timeout`` too.
- :class:`ConnectionGuard` counts connections still negotiating (``max_pending_*``, checked at
  accept) apart from associations (``max_associations[_per_address]``, checked when the
  A-ASSOCIATE-RQ is complete), so silent connections never take an association slot. Every
  refusal is an A-ASSOCIATE-RJ (transient, local limit exceeded) sent at once.
- :class:`EdgeServer` does the TLS handshake in the connection's own thread, under the
  negotiation deadline, rather than in the accept loop where one stalled handshake would stop
  every new connection.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import struct
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from kneenode.logs import get_logger
from kneenode.settings import ScpSettings
from scp import metrics
from scp.pynetdicom_hooks import guard_state_machine, use_socket_class

log = get_logger(__name__)

_PDU_TYPES = range(0x01, 0x08)
A_ASSOCIATE_RQ = 0x01
# A-ABORT reasons (source 2, service provider), PS3.8 9.3.8
ABORT_NOT_SPECIFIED = 0x00
ABORT_INVALID_PARAMETER = 0x06
# A-ASSOCIATE-RJ: transient, service-provider (presentation), local-limit-exceeded
REJECT_LOCAL_LIMIT = (0x02, 0x03, 0x02)


def abort_pdu(reason: int) -> bytes:
    """An A-ABORT PDU from the service provider (source 2)."""
    return struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 0x02, reason)


def reject_pdu(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ PDU."""
    return struct.pack(">BBLBBBB", 0x03, 0, 4, 0, result, source, reason)


class Phase(Enum):
    """Where a connection is; only ASSOCIATED takes an association slot."""

    PENDING = "pending"  # connected, A-ASSOCIATE-RQ not complete yet
    REQUESTED = "requested"  # A-ASSOCIATE-RQ read, being checked
    ASSOCIATED = "associated"  # admitted by :meth:`ConnectionGuard.admit`
    DONE = "done"


@dataclass
class Connection:
    """The guard's record of one connection (shared by its socket and its handlers)."""

    address: str
    limits: ScpSettings
    assoc: Any = None
    phase: Phase = Phase.PENDING
    started: float = field(default_factory=time.monotonic)
    body_left: int | None = None  # declared length of the PDU whose header was just read
    pdu_type: int = 0
    pdu_deadline: float = 0.0

    @property
    def negotiation_deadline(self) -> float:
        return self.started + self.limits.negotiation_timeout

    def live(self) -> bool:
        """Still holding something: its thread runs, or is about to start."""
        if self.phase is Phase.DONE:
            return False
        return self.assoc is None or self.assoc.ident is None or bool(self.assoc.is_alive())

    def connected(self) -> bool:
        sock = self.assoc.dul.socket if self.assoc is not None else None
        return sock is None or sock.socket is not None


class ConnectionGuard:
    """Counts and caps connections and associations, overall and per IP address."""

    def __init__(self, limits: ScpSettings) -> None:
        self.limits = limits
        self.lock = threading.Lock()
        self._conns: list[Connection] = []

    def _prune(self) -> list[Connection]:
        self._conns = [c for c in self._conns if c.live()]
        return self._conns

    def counts(self, address: str) -> dict[str, int]:
        """Pending and associated connections, in all and from ``address``."""
        with self.lock:
            return self._counts(address)

    def _counts(self, address: str) -> dict[str, int]:
        conns = self._prune()
        pending = [c for c in conns if c.phase in (Phase.PENDING, Phase.REQUESTED) and c.connected()]
        assoc = [c for c in conns if c.phase is Phase.ASSOCIATED]
        return {"pending": len(pending), "pending_here": sum(c.address == address for c in pending),
                "associated": len(assoc), "associated_here": sum(c.address == address for c in assoc)}

    def open(self, address: str) -> tuple[Connection | None, str]:
        """A new TCP connection: its record, or None and why it is refused."""
        with self.lock:
            n = self._counts(address)
            if n["pending"] >= self.limits.max_pending_connections:
                return None, (f"{n['pending']} connections still negotiating "
                              "(scp.max_pending_connections)")
            if n["pending_here"] >= self.limits.max_pending_per_address:
                return None, (f"{n['pending_here']} connections from {address} still negotiating "
                              "(scp.max_pending_per_address)")
            conn = Connection(address=address, limits=self.limits)
            self._conns.append(conn)
        return conn, ""

    def admit(self, conn: Connection) -> str:
        """The A-ASSOCIATE-RQ is in: take an association slot, or say why not ("" = admitted)."""
        with self.lock:
            n = self._counts(conn.address)
            if n["associated"] >= self.limits.max_associations:
                return f"{n['associated']} associations open (scp.max_associations)"
            if n["associated_here"] >= self.limits.max_associations_per_address:
                return (f"{n['associated_here']} associations open from {conn.address} "
                        "(scp.max_associations_per_address)")
            conn.phase = Phase.ASSOCIATED
            return ""


    def end(self, why: str, *, pending_only: bool) -> int:
        """Abort connections (all, or those still negotiating); how many. For shutdown: a
        connection blocked reading a PDU would otherwise hold the stop until its deadline."""
        with self.lock:
            conns = [c for c in self._prune() if c.assoc is not None
                     and (not pending_only or c.phase in (Phase.PENDING, Phase.REQUESTED))]
        ended = 0
        for c in conns:
            sock = c.assoc.dul.socket
            if isinstance(sock, GuardedSocket):
                sock._give_up(ABORT_NOT_SPECIFIED, why, "shutdown")
                ended += 1
        return ended


def connection_of(assoc: Any) -> Connection | None:
    """The guard's record of an association's connection (None outside :class:`EdgeServer`)."""
    sock = getattr(assoc.dul, "socket", None)
    return getattr(sock, "edge", None)


class GuardedSocket(AssociationSocket):
    """pynetdicom's transport socket with deadlines and the declared-PDU bound (see module doc)."""

    edge: Connection

    @property
    def ready(self) -> bool:
        """Data to read? Also where a connection that never completes negotiation is ended."""
        c = self.edge
        if (c.phase is Phase.PENDING and self.socket is not None
                and time.monotonic() > c.negotiation_deadline):
            self._give_up(ABORT_NOT_SPECIFIED, "no complete A-ASSOCIATE-RQ within "
                          f"{c.limits.negotiation_timeout:g} s (scp.negotiation_timeout)")
            self.close()
            return False
        return bool(super().ready)

    def recv(self, nr_bytes: int) -> bytearray:
        """Read a PDU header (6 bytes) or the body it declared, before the deadline."""
        c = self.edge
        if c.body_left is None or nr_bytes != c.body_left:
            return self._recv_header(nr_bytes)
        c.body_left = None
        body = self._read(nr_bytes, c.pdu_deadline, "PDU")
        if c.pdu_type == A_ASSOCIATE_RQ and len(body) == nr_bytes and c.phase is Phase.PENDING:
            c.phase = Phase.REQUESTED
        return body

    def _recv_header(self, nr_bytes: int) -> bytearray:
        c = self.edge
        now = time.monotonic()
        if c.phase is Phase.PENDING:
            deadline = c.negotiation_deadline
        else:
            deadline = now + c.limits.pdu_timeout
        head = self._read(nr_bytes, deadline, "PDU header")
        if len(head) != 6:
            return head
        pdu_type, _, length = struct.unpack(">BBL", head)
        if pdu_type not in _PDU_TYPES:
            return head  # pynetdicom answers an unknown PDU type itself (A-ABORT)
        if length > c.limits.max_declared_pdu:
            self._give_up(ABORT_INVALID_PARAMETER, f"PDU type 0x{pdu_type:02X} declares {length} "
                          f"bytes, over scp.max_declared_pdu ({c.limits.max_declared_pdu})",
                          "declared_pdu")
            return bytearray()  # a short read: pynetdicom treats it as a closed connection
        c.body_left, c.pdu_type, c.pdu_deadline = length, pdu_type, deadline
        return head

    def _read(self, n: int, deadline: float, what: str) -> bytearray:
        raw = self.socket
        out = bytearray()
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0 or raw is None:
                self._give_up(ABORT_NOT_SPECIFIED, self._late(what, len(out), n))
                return out
            raw.settimeout(left)
            try:
                chunk = raw.recv(min(n - len(out), 65536))
            except TimeoutError:
                self._give_up(ABORT_NOT_SPECIFIED, self._late(what, len(out), n))
                return out
            if not chunk:
                return out
            out += chunk
        return out

    def _late(self, what: str, got: int, n: int) -> str:
        c = self.edge
        which = ("scp.negotiation_timeout" if c.phase is Phase.PENDING else "scp.pdu_timeout")
        return f"{what} incomplete at the deadline ({got} of {n} bytes, {which})"

    def send(self, bytestream: bytes) -> None:
        """Send with ``scp.pdu_timeout``: a peer that stops reading cannot block the thread."""
        if self.socket is not None:
            self.socket.settimeout(self.edge.limits.pdu_timeout)
        super().send(bytestream)

    def _give_up(self, reason: int, why: str, kind: str = "deadline") -> None:
        """Tell the peer (A-ABORT, best effort) and shut the transport; pynetdicom then ends."""
        if self.edge.phase is Phase.DONE:
            return
        self.edge.phase = Phase.DONE  # holds no slot from here on
        log.warning("connection aborted by the edge", peer=self.edge.address, reason=why)
        metrics.CONNECTIONS_ABORTED.labels(reason=kind).inc()
        raw = self.socket
        if raw is None:
            return
        try:
            raw.settimeout(1.0)
            raw.sendall(abort_pdu(reason))
        except OSError:
            pass
        try:
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def crashed(self, exc: BaseException) -> None:
        """A pynetdicom state-machine action raised: abort the association promptly.

        After the edge's own abort, pynetdicom may still trip over the closed transport; that
        is not the peer's doing and is only logged at debug level.
        """
        assoc = self.edge.assoc
        if self.edge.phase is Phase.DONE:
            log.debug("pynetdicom error after the edge aborted", error=str(exc))
        else:
            log.error("association aborted: pynetdicom failed on what the peer sent",
                      peer=self.edge.address, error=f"{type(exc).__name__}: {exc}")
            self._give_up(ABORT_INVALID_PARAMETER, "malformed PDU or DIMSE message", "malformed")
        if assoc is not None:
            assoc.is_aborted, assoc.is_established = True, False
            assoc.dul.kill_dul()


class EdgeRequestHandler(RequestHandler):
    """Per connection: refuse it at once when over the pending caps, else guard its socket."""

    server: EdgeServer

    def handle(self) -> None:
        address = str(self.client_address[0])
        conn, why = self.server.guard.open(address)
        if conn is None:
            self._refuse(address, why)
            return
        if isinstance(self.request, ssl.SSLSocket) and not self._handshake(conn):
            conn.phase = Phase.DONE
            return
        self._edge = conn
        super().handle()

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        conn: Connection = self._edge
        conn.assoc = assoc
        sock = use_socket_class(assoc, GuardedSocket)
        sock.edge = conn
        guard_state_machine(assoc, sock.crashed)
        return assoc

    def _handshake(self, conn: Connection) -> bool:
        sock: ssl.SSLSocket = self.request  # type: ignore[assignment]
        try:
            sock.settimeout(max(conn.negotiation_deadline - time.monotonic(), 0.1))
            sock.do_handshake()
            sock.settimeout(None)
            return True
        except (OSError, ValueError) as exc:
            log.warning("TLS handshake failed", peer=conn.address, error=str(exc))
            self.server.shutdown_request(sock)
            return False

    def _refuse(self, address: str, why: str) -> None:
        """A-ASSOCIATE-RJ now; read what the peer sends meanwhile so the RJ is not reset."""
        metrics.ASSOCIATIONS_REJECTED.inc()
        log.warning("connection refused", peer=address, reason=why)
        sock: socket.socket = self.request  # type: ignore[assignment]
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.settimeout(2.0)
                sock.do_handshake()
            sock.settimeout(2.0)
            sock.sendall(reject_pdu(*REJECT_LOCAL_LIMIT))
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and sock.recv(65536):
                pass
        except (OSError, ValueError):
            pass
        finally:
            self.server.shutdown_request(sock)


class EdgeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the edge's guard and request handler."""

    guard: ConnectionGuard

    def get_request(self) -> tuple[socket.socket, Any]:
        """Accept; wrap TLS without handshaking here (it happens in the connection's thread)."""
        assert self.socket is not None
        client, address = self.socket.accept()
        client.settimeout(self.guard.limits.pdu_timeout)
        if self.ssl_context:
            client = self.ssl_context.wrap_socket(client, server_side=True,
                                                  do_handshake_on_connect=False)
        return client, address

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket (the AE does not track this server)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()

    def server_close(self) -> None:
        """Close the listening socket (without joining connection threads: they end on their own)."""
        assert self.socket is not None
        try:
            self.socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.socket.close()

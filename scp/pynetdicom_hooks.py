"""The only places the edge reaches into pynetdicom internals (written for pynetdicom 3.0.x).

Everything else in ``scp`` uses pynetdicom's public API. These three hooks exist because the
public API leaves no way to get the behaviour the edge promises (docs/conformance.md, "Edge
guarantees"); each is per association or installed once by :func:`scp.server.start_scp`, and
:data:`TESTED_WITH` names the version they were checked against (tests/faults covers them):

- :func:`use_socket_class`: pynetdicom's ``RequestHandler`` builds a plain ``AssociationSocket``
  for every connection and offers no factory for it. The edge's handler extends
  ``RequestHandler._create_association`` (the one private method it overrides) and swaps the
  new instance's class for its subclass :class:`scp.connections.GuardedSocket` (deadlines,
  declared-PDU bound) before the association thread starts. Nothing else about it changes.
- :func:`guard_state_machine`: an exception inside a DUL state-machine action (e.g. decoding a
  C-STORE-RQ whose Affected SOP Instance UID is empty, or random bytes as a DIMSE command) kills
  pynetdicom's reactor thread without a word to the peer (``fsm.StateMachine.do_action``
  re-raises). The wrapper answers A-ABORT at once and ends the association cleanly instead.
- :func:`install_receive_file_factory`: with ``STORE_RECV_CHUNKED_DATASET`` pynetdicom writes
  the received data set to ``tempfile.NamedTemporaryFile`` from ``dimse_messages``; a write
  error there (ENOSPC) also kills the reactor. The factory returns a file that records write
  errors and the size limit instead of raising, so the C-STORE handler can answer a status.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pynetdicom
from pynetdicom import dimse_messages

TESTED_WITH = "3.0"


def version_supported() -> bool:
    """Whether the installed pynetdicom is the minor version these hooks were written for."""
    return str(pynetdicom.__version__).startswith(TESTED_WITH + ".")


def use_socket_class(assoc: Any, cls: type) -> Any:
    """Make the association's (not yet used) transport socket an instance of ``cls``."""
    sock = assoc.dul.socket
    sock.__class__ = cls
    return sock


def guard_state_machine(assoc: Any, on_crash: Callable[[BaseException], None]) -> None:
    """Call ``on_crash`` instead of letting an action's exception kill the DUL thread.

    pynetdicom has already stopped the DUL loop (``kill_dul``) when the exception reaches us;
    ``on_crash`` tells the peer (A-ABORT) and closes the transport.
    """
    machine = assoc.dul.state_machine
    do_action = machine.do_action

    def guarded(event: str) -> None:
        try:
            do_action(event)
        except Exception as exc:  # noqa: BLE001 - the point: no exception may end the thread
            on_crash(exc)

    machine.do_action = guarded


def install_receive_file_factory(factory: Callable[..., Any]) -> None:
    """Have pynetdicom's chunked C-STORE receive create its temp files with ``factory``."""
    dimse_messages.NamedTemporaryFile = factory  # type: ignore[attr-defined]

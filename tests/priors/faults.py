"""Fault fixture: a Query/Retrieve SCP of our own (pynetdicom) that answers C-FIND late.

A real PACS that is slow to answer a C-FIND cannot be produced on demand, so this SCP accepts
the association and then holds every C-FIND for ``delay_s`` before answering (no match,
Success). It is the "PACS slow" fault of tests/priors; it listens on loopback only and is shut
down by the test.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)


class SlowFindScp:
    """A C-FIND SCP answering after ``delay_s``; ``finds`` counts the requests it got."""

    def __init__(self, port: int, *, delay_s: float, aet: str = "SLOWPACS") -> None:
        self.port, self.delay_s, self.finds = port, delay_s, 0
        self.release = threading.Event()  # set at stop: a held C-FIND ends at once
        self._ae = AE(ae_title=aet)
        self._ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        self._server: Any = None

    def _on_find(self, event: Any) -> Iterator[tuple[int, Any]]:
        self.finds += 1
        self.release.wait(self.delay_s)
        yield 0x0000, None

    def start(self) -> SlowFindScp:
        self._server = self._ae.start_server(
            ("127.0.0.1", self.port), block=False,
            evt_handlers=[(evt.EVT_C_FIND, self._on_find)])
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.shutdown()

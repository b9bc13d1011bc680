"""A daemon thread that runs a node's background passes (retention, reconciliation) on a timer.

Each step runs in isolation: one that raises is logged and the others still run; the next tick
tries it again. ``stop()`` waits for the current pass to end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from kneenode.logs import get_logger

log = get_logger(__name__)


class Periodic:
    """Run ``steps`` every ``interval_s`` seconds; the first pass at once when ``at_start``."""

    def __init__(self, name: str, interval_s: float, steps: list[Callable[[], object]], *,
                 at_start: bool) -> None:
        self.name = name
        self.interval_s = interval_s
        self.steps = steps
        self.at_start = at_start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def run_once(self) -> None:
        """One pass over every step (each isolated)."""
        for step in self.steps:
            try:
                step()
            except Exception:
                log.exception("background pass failed", loop=self.name,
                              step=getattr(step, "__name__", repr(step)))

    def _run(self) -> None:
        if self.at_start:
            self.run_once()
        while not self._stop.wait(self.interval_s):
            self.run_once()

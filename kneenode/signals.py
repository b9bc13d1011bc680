"""Process-level signal handling shared by every long-running command."""

from __future__ import annotations

import faulthandler
import signal
import threading


def install_stop_handlers() -> threading.Event:
    """Turn SIGINT/SIGTERM into an event; SIGUSR1 prints every thread's stack (faulthandler)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    return stop


def wait_for_stop_signal() -> None:
    """Block the main thread until SIGINT or SIGTERM."""
    stop = install_stop_handlers()
    while not stop.wait(0.5):
        pass

"""Receiving a data set into spool/tmp: bounded in size, write errors kept for the handler.

pynetdicom's chunked receive writes each data set fragment to a temp file as it arrives (on the
DUL thread). :class:`ReceiveFile` is that temp file (installed by
:func:`scp.pynetdicom_hooks.install_receive_file_factory`): it stops writing and frees what it
wrote once the instance passes ``scp.max_instance_bytes`` or a write fails (ENOSPC, EIO), and
remembers why, so :func:`scp.handlers.handle_store` can answer 0xA702 / 0xA701 instead of the
reactor dying mid-message. :class:`ReceiveRegistry` knows which temp files live associations are
still writing; :class:`TmpSweeper` removes the others (aborted receives) while the node runs.
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kneenode.logs import get_logger
from scp import edgehealth

log = get_logger(__name__)

_CHUNK = 1 << 20


class ReceiveFile:
    """One incoming data set's temp file (the subset of the file API pynetdicom uses)."""

    def __init__(self, registry: ReceiveRegistry, limit: int) -> None:
        self.file = self  # pynetdicom calls ``.file.flush()`` after each fragment
        self.limit = limit
        self.size = 0
        self.error = ""
        self.too_large = False
        self._registry = registry
        self._fh: Any = None
        try:
            fd, self.name = tempfile.mkstemp(suffix=".dcm")  # tempfile.tempdir is spool/tmp
        except OSError as exc:  # no inode, read-only: a name that never exists, failed already
            self.name = os.path.join(tempfile.gettempdir(), f"unwritable-{uuid.uuid4().hex}.dcm")
            self.error = f"{type(exc).__name__}: {exc}"
            edgehealth.record_write_failure(self.error)
            return
        # unbuffered: a failed write leaves nothing pending; closed by close() (pynetdicom)
        self._fh = open(fd, "wb", buffering=0)  # noqa: SIM115

    @property
    def failed(self) -> bool:
        """True once the data set can no longer be kept (too large or a write failed)."""
        return self.too_large or bool(self.error)

    def write(self, data: bytes) -> int:
        """Write (or, once failed, discard) ``data``; never raises for a write error."""
        n = len(data)
        if self.failed:
            return n
        self.size += n
        if self.size > self.limit:
            self.too_large = True
            self._discard()
            return n
        view = memoryview(data)
        try:
            while view:
                written = self._fh.write(view)
                view = view[written or 0:]
        except OSError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            edgehealth.record_write_failure(self.error)
            self._discard()
        return n

    def flush(self) -> None:
        """Nothing is buffered (the file is unbuffered)."""

    def close(self) -> None:
        """Close the descriptor and forget the file (pynetdicom unlinks it afterwards)."""
        try:
            if self._fh is not None:
                self._fh.close()
        except OSError:
            pass
        self._registry.forget(self.name)

    def _discard(self) -> None:
        """Free the space and the name now: nothing partial stays behind, even on an abort."""
        try:
            if self._fh is not None:
                os.ftruncate(self._fh.fileno(), 0)
        except OSError:
            pass
        Path(self.name).unlink(missing_ok=True)


@dataclass
class _Entry:
    file: ReceiveFile
    owner: threading.Thread


class ReceiveRegistry:
    """The temp files being written, by path, with the thread (the association's DUL) writing."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._files: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def new_file(self, *args: Any, **kwargs: Any) -> ReceiveFile:
        """The factory pynetdicom calls instead of ``NamedTemporaryFile`` (arguments ignored)."""
        with self._lock:  # creation and registration are one step for the sweeper
            f = ReceiveFile(self, self.limit)
            self._files[f.name] = _Entry(f, threading.current_thread())
        return f

    def forget(self, name: str) -> None:
        with self._lock:
            self._files.pop(name, None)

    def lookup(self, path: str | Path) -> ReceiveFile | None:
        """The receive file at ``path`` while it is open (the C-STORE handler runs before close)."""
        with self._lock:
            entry = self._files.get(str(path))
        return entry.file if entry else None

    def remove_orphans(self, folder: Path, grace_seconds: float) -> list[str]:
        """Delete files in ``folder`` no live association writes, older than the grace period."""
        removed: list[str] = []
        now = time.time()
        for path in sorted(folder.iterdir()):
            with self._lock:
                entry = self._files.get(str(path))
                if entry is not None and entry.owner.is_alive():
                    continue
                try:
                    if now - path.stat().st_mtime < grace_seconds:
                        continue
                    path.unlink()
                except FileNotFoundError:
                    continue
                if entry is not None:
                    self._files.pop(str(path), None)
            removed.append(path.name)
        return removed


class TmpSweeper:
    """Background thread: remove orphan temp files from spool/tmp every ``interval`` seconds."""

    def __init__(self, registry: ReceiveRegistry, folder: Path, interval: float, grace: float):
        self.registry, self.folder, self.interval, self.grace = registry, folder, interval, grace
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tmp-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def sweep(self) -> list[str]:
        """One pass; never raises (a sweep failure must not stop the next)."""
        try:
            removed = self.registry.remove_orphans(self.folder, self.grace)
        except OSError as exc:
            log.error("temp folder sweep failed", folder=str(self.folder), error=str(exc))
            return []
        if removed:
            log.warning("removed orphan temp files of receives that ended without an answer",
                        count=len(removed), folder=str(self.folder))
        return removed

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sweep()


def dataset_offset(path: Path) -> int:
    """Byte offset of the data set in a received file (after preamble and file meta)."""
    with open(path, "rb") as fh:
        head = fh.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("no file meta group length")
    (group_length,) = struct.unpack("<L", head[140:144])
    return 144 + int(group_length)


def inflate(path: Path, offset: int, limit: int, keep: int = 0) -> tuple[int, bytes]:
    """Stream-inflate a deflated data set; return (inflated size, its first ``keep`` bytes).

    Stops counting once past ``limit`` (the returned size is then ``limit + 1``), so a deflate
    bomb costs at most one chunk of memory. Raises ``zlib.error`` for a corrupt stream.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    size, prefix = 0, bytearray()
    with open(path, "rb") as fh:
        fh.seek(offset)
        while True:
            data = fh.read(_CHUNK)
            if not data:
                break
            while data:
                out = inflater.decompress(data, _CHUNK)
                data = inflater.unconsumed_tail
                size += len(out)
                if len(prefix) < keep:
                    prefix += out[: keep - len(prefix)]
                if size > limit:
                    return limit + 1, bytes(prefix)
            if inflater.eof:
                break
    size += len(inflater.flush())
    return min(size, limit + 1), bytes(prefix)

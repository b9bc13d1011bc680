"""Durable file writes shared by every package: temp file in the same folder, fsync, rename.

Readers never see half a file, and a crash leaves either the old or the new content.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fsync_dir(path: Path) -> None:
    """Make a create/rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[str], None], *, suffix: str = "",
                 sync_dir: bool = True) -> None:
    """Let ``write(tmp_path)`` produce the file, then fsync and rename it to ``path``.

    ``sync_dir=False`` leaves the folder's fsync to the caller (one for many files).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        if sync_dir:
            fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write bytes durably."""
    def write(tmp: str) -> None:
        Path(tmp).write_bytes(data)

    write_atomic(path, write)


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text durably."""

    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    write_atomic(path, write)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON (indented, sorted keys, ``str`` for unknown types) durably."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")

"""DCMTK tools as the sending PACS (TCP_NODELAY=1: otherwise each instance waits on a delayed ACK)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu(port: int, files: Sequence[Path], *, aet: str = "PACS", aec: str = "KNEENODE",
             host: str = "127.0.0.1", extra: Sequence[str] = (), timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
    """Send files with DCMTK storescu over one association; returns the finished process."""
    cmd = ["storescu", "-v", "-aet", aet, "-aec", aec, *extra, host, str(port), *map(str, files)]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=dcmtk_env())


def echoscu(port: int, *, aet: str = "PACS", aec: str = "KNEENODE", host: str = "127.0.0.1"
            ) -> subprocess.CompletedProcess[str]:
    cmd = ["echoscu", "-v", "-aet", aet, "-aec", aec, host, str(port)]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60, env=dcmtk_env())

"""Shared pieces of the edge fault tests: a node config, acknowledged-instance checks, RSS."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import AE, _config

from tests.support.dcmtk import storescu
from tests.support.procs import wait_for

MR = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def edge_config(**scp: Any) -> dict[str, Any]:
    """Open access, quick completion, and the given ``[scp]`` overrides."""
    return {"scp": {"allow_any": True, **scp},
            "completion": {"quiet_seconds": 1.0, "poll_seconds": 0.2}}


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set after the file meta (what travelled on the wire)."""
    data = path.read_bytes()
    (group_len,) = struct.unpack("<I", data[140:144])
    return data[144 + group_len:]


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def stored_copies(spool: Path, uid: str) -> list[Path]:
    """Every spooled copy of an instance (open or complete series)."""
    return [p for p in spool.rglob(f"{uid}.dcm") if "tmp" not in p.relative_to(spool).parts]


def send_acknowledged(port: int, files: list[Path], **kwargs: Any) -> list[Path]:
    """Send with storescu and require Success for all: these are now the node's to keep."""
    done = storescu(port, files, **kwargs)
    assert done.returncode == 0, done.stdout + done.stderr
    return list(files)


def assert_kept(spool: Path, acknowledged: list[Path], timeout: float = 30) -> None:
    """Every acknowledged instance is in the spool exactly once, byte-identical."""
    for f in acknowledged:
        uid = sop_uid(f)
        wait_for(lambda uid=uid: len(stored_copies(spool, uid)) == 1, timeout,
                 what=f"instance {uid} in the spool")
        (copy,) = stored_copies(spool, uid)
        assert dataset_bytes(copy) == dataset_bytes(f)


def send_raw(port: int, paths: list[Path], syntaxes: list[str] | None = None,
             bind: str = "127.0.0.1") -> list[int | None]:
    """Send files' bytes as they are over one pynetdicom association; the status of each."""
    ae = AE(ae_title="FAULTS")
    ae.add_requested_context(MR, syntaxes or [EXPLICIT_LE])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="KNEENODE", bind_address=(bind, 0))
        assert assoc.is_established
        statuses: list[int | None] = []
        for p in paths:
            rsp = assoc.send_c_store(p)
            statuses.append(int(rsp.Status) if "Status" in rsp else None)
        assoc.release()
        return statuses
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a process so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def tmp_files(spool: Path) -> list[str]:
    return sorted(p.name for p in (spool / "tmp").iterdir())


def elapsed(fn: Any, *args: Any, **kwargs: Any) -> tuple[float, Any]:
    t0 = time.monotonic()
    out = fn(*args, **kwargs)
    return time.monotonic() - t0, out

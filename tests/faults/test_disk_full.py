"""A really full spool filesystem: 0xA701, nothing partial, /health degraded, then recovery.

The spool (data/spool) of a real ``kneenode serve`` is a small tmpfs mounted for the test, then
filled to the last page; the rest of data_dir (redis, jobs) stays on the normal disk.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kneenode.settings import Settings
from scp.edgehealth import spool_health
from tests.faults.common import (
    assert_kept,
    edge_config,
    send_acknowledged,
    send_raw,
    sop_uid,
    stored_copies,
    tmp_files,
)
from tests.support.mr import mr_series
from tests.support.procs import wait_for
from tests.workers.conftest import FAST_JOBS


@pytest.fixture(params=["blocks", "inodes"])
def tmpfs_spool(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """The spool on a 16 MiB tmpfs; "inodes": one with few inodes, to run out of them instead."""
    spool = tmp_path / "node" / "data" / "spool"
    spool.mkdir(parents=True)
    options = "size=16m" if request.param == "blocks" else "size=16m,nr_inodes=400"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(spool)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("a tmpfs cannot be mounted here (needs root or CAP_SYS_ADMIN): "
                    + (mounted.stderr.strip() or f"mount exited {mounted.returncode}"))
    yield spool
    subprocess.run(["umount", "-l", str(spool)], check=False)


def _fill(folder: Path, inodes: bool) -> list[Path]:
    """Write until not even 4 KiB fits or, with ``inodes``, create files until no inode is left."""
    if inodes:
        fillers: list[Path] = []
        try:
            while True:
                (folder / f"filler-{len(fillers)}").touch()
                fillers.append(folder / f"filler-{len(fillers)}")
        except OSError:
            return fillers
    with open(folder / "filler", "wb", buffering=0) as fh:
        for size in (1 << 20, 1 << 12):
            block = b"\xff" * size
            try:
                while True:
                    fh.write(block)
            except OSError:
                continue
    return [folder / "filler"]


def _mount_options(path: Path) -> str:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == str(path):
            return fields[3]
    return ""


def _health(base: str) -> tuple[int, dict]:
    r = httpx.get(f"{base}/health", timeout=10)
    return r.status_code, r.json()


def test_full_spool_answers_a701_keeps_nothing_partial_and_recovers(node_factory, tmpfs_spool):
    jobs = {k: v for k, v in FAST_JOBS.items() if k != "redis_url"}
    node = node_factory({**edge_config(), "jobs": jobs}, command="serve", name="node")
    assert node.spool == tmpfs_spool
    base = f"http://127.0.0.1:{json.loads((node.data_dir / 'serve.json').read_text())['http_port']}"
    wait_for(lambda: _health(base)[0] == 200, 60, what="/health ok")
    assert _health(base)[1]["spool"]["status"] == "ok"

    src = node.root.parent / "src"
    first = send_acknowledged(node.port, mr_series(src / "a", slices=3))
    later = mr_series(src / "b", slices=2, rows=256, columns=256, seed=7)
    fillers = _fill(tmpfs_spool, inodes="nr_inodes" in _mount_options(tmpfs_spool))

    assert send_raw(node.port, later) == [0xA701, 0xA701]
    assert "write failed while receiving" in node.log()  # ENOSPC in the receive, answered
    assert tmp_files(node.spool) == []  # nothing partial in spool/tmp
    assert not any(stored_copies(node.spool, sop_uid(f)) for f in later)
    code, doc = _health(base)
    assert code == 503 and doc["status"] == "degraded"
    assert any("spool not writable" in r for r in doc["spool"]["reasons"]), doc["spool"]
    assert "No space left on device" in doc["spool"]["last_write_failure"]["error"]

    for f in fillers:  # space returns
        f.unlink()
    wait_for(lambda: _health(base)[0] == 200, 30, what="/health ok again")
    assert _health(base)[1]["status"] == "ok"
    assert send_raw(node.port, later) == [0x0000, 0x0000]
    assert_kept(node.spool, first + later)
    assert tmp_files(node.spool) == []


def test_health_reports_the_watermark_and_returns_to_ok(tmp_path):
    """The spool part of /health on the real filesystem: below the watermark, then not."""
    (tmp_path / "spool" / "tmp").mkdir(parents=True)
    low = Settings(data_dir=tmp_path, spool={"min_free_bytes": 2**62})
    doc = spool_health(low)
    assert doc["status"] == "degraded"
    assert any("below free-space watermark" in r and "0xA700" in r for r in doc["reasons"])
    ok = Settings(data_dir=tmp_path, spool={"min_free_bytes": 0, "min_free_percent": 0})
    again = spool_health(ok)
    assert again["status"] == "ok" and again["reasons"] == []

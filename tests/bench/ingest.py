"""Ingest benchmark: kneenode's Storage SCP against DCMTK storescp, in the same run.

    .venv/bin/python tests/bench/ingest.py [--runs 7] [--instances 160]

Sends ``--instances`` 384x384 16-bit MR instances (295 KB each) with DCMTK storescu over one
association (TCP_NODELAY=1), to kneenode (fsync on) and to storescp; median of ``--runs`` each,
interleaved so machine noise hits both; then 4 concurrent associations. Prints a table and the
ratio kneenode/storescp. Target: <= 2.0x.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.dcmtk import dcmtk_env
from tests.support.mr import mr_series
from tests.support.node import Node
from tests.support.procs import free_port, port_open, start, stop, wait_for


def send(port: int, files: list[Path], aec: str) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(["storescu", "-aet", "BENCH", "-aec", aec, "127.0.0.1", str(port),
                           *map(str, files)], check=False, capture_output=True, text=True, env=dcmtk_env())
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return elapsed


def send_parallel(port: int, sets: list[list[Path]], aec: str) -> float:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(sets)) as pool:
        list(pool.map(lambda fs: send(port, fs, aec), sets))
    return time.perf_counter() - t0


def clear(folder: Path) -> None:
    for child in folder.iterdir():
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--instances", type=int, default=160)
    ap.add_argument("--no-fsync", action="store_true", help="measure without fsync (not durable)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kneenode-bench-"))
    try:
        series = mr_series(root / "src", slices=args.instances, rows=384, columns=384)
        sets = [mr_series(root / f"c{i}", slices=args.instances // 4, rows=384, columns=384,
                          seed=i) for i in range(4)]
        size_kb = series[0].stat().st_size / 1024
        ref_out = root / "storescp"
        ref_out.mkdir()
        ref_port = free_port()
        ref = start(["storescp", "-aet", "STORESCP", "-od", str(ref_out), str(ref_port)],
                    log=root / "storescp.log", env=dcmtk_env())
        node = Node(root=root / "node", config={
            "scp": {"allow_any": True, "max_associations": 8},
            "completion": {"quiet_seconds": 3600, "policy": "timer"},  # ingest alone
            "logging": {"level": "WARNING"},
            "spool": {"fsync": not args.no_fsync},
        })
        node.root.mkdir()
        node.start()
        wait_for(lambda: port_open(ref_port), 10, what="storescp")
        times: dict[str, list[float]] = {k: [] for k in ("storescp", "kneenode", "storescp x4",
                                                          "kneenode x4")}
        send(ref_port, series[:5], "STORESCP")  # warm-up
        send(node.port, series[:5], "KNEENODE")
        for _ in range(args.runs):
            clear(ref_out)
            clear(node.spool / "incoming")
            times["storescp"].append(send(ref_port, series, "STORESCP"))
            times["kneenode"].append(send(node.port, series, "KNEENODE"))
            clear(ref_out)
            clear(node.spool / "incoming")
            times["storescp x4"].append(send_parallel(ref_port, sets, "STORESCP"))
            times["kneenode x4"].append(send_parallel(node.port, sets, "KNEENODE"))
        stop(ref)
        node.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.instances} instances of 384x384x16-bit ({size_kb:.0f} KB), "
          f"median of {args.runs} runs, fsync {'off' if args.no_fsync else 'on'}\n")
    print(f"{'receiver':<14}{'median s':>10}{'min s':>9}{'max s':>9}{'inst/s':>9}")
    for k, v in times.items():
        print(f"{k:<14}{med[k]:>10.3f}{min(v):>9.3f}{max(v):>9.3f}{args.instances / med[k]:>9.0f}")
    print(f"\nratio kneenode/storescp, one association : {med['kneenode'] / med['storescp']:.2f}x")
    print(f"ratio kneenode/storescp, 4 associations  : "
          f"{med['kneenode x4'] / med['storescp x4']:.2f}x   (target <= 2.0x)")


if __name__ == "__main__":
    main()

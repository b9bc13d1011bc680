"""Ingest benchmark: kneenode's Storage SCP against DCMTK storescp, in the same run.

    .venv/bin/python tests/bench/ingest.py [--runs 7] [--instances 160]
        [--appendfsync always,everysec]

Sends ``--instances`` 384x384 16-bit MR instances (295 KB each) with DCMTK storescu over one
association (TCP_NODELAY=1), to kneenode (fsync on) and to storescp; median of ``--runs`` each,
interleaved so machine noise hits both; then 4 concurrent associations. Prints a table and the
ratio kneenode/storescp. Target: <= 2.0x.

``--appendfsync`` receives with ``kneenode serve`` instead (one node per redis fsync policy,
interleaved in the same runs): each sent series completes after 0.5 s and becomes a job of the
no-op chain, so hand-offs and job bookkeeping run beside the receiving.
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
    ap.add_argument("--appendfsync", default="", help="receive with serve, one node per redis "
                    "fsync policy (e.g. always,everysec); default: the edge alone")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="kneenode-bench-"))
    procs: list[subprocess.Popen] = []
    nodes: dict[str, Node] = {}
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
        procs.append(ref)
        nodes.update(make_nodes(root, args))
        wait_for(lambda: port_open(ref_port), 10, what="storescp")
        times: dict[str, list[float]] = {"storescp": [], "storescp x4": []}
        for name in nodes:
            times[name], times[f"{name} x4"] = [], []
        send(ref_port, series[:5], "STORESCP")  # warm-up
        for node in nodes.values():
            send(node.port, series[:5], "KNEENODE")
        for _ in range(args.runs):
            clear(ref_out)
            times["storescp"].append(send(ref_port, series, "STORESCP"))
            for name, node in nodes.items():
                clear(node.spool / "incoming")
                times[name].append(send(node.port, series, "KNEENODE"))
            clear(ref_out)
            times["storescp x4"].append(send_parallel(ref_port, sets, "STORESCP"))
            for name, node in nodes.items():
                clear(node.spool / "incoming")
                times[f"{name} x4"].append(send_parallel(node.port, sets, "KNEENODE"))
    finally:
        for proc in procs:
            stop(proc)
        for node in nodes.values():
            node.stop()
        shutil.rmtree(root, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.instances} instances of 384x384x16-bit ({size_kb:.0f} KB), "
          f"median of {args.runs} runs, fsync {'off' if args.no_fsync else 'on'}\n")
    print(f"{'receiver':<14}{'median s':>10}{'min s':>9}{'max s':>9}{'inst/s':>9}")
    for k, v in times.items():
        print(f"{k:<14}{med[k]:>10.3f}{min(v):>9.3f}{max(v):>9.3f}{args.instances / med[k]:>9.0f}")
    for name in (k for k in times if k.startswith("kneenode") and not k.endswith(" x4")):
        print(f"\nratio {name}/storescp, one association : {med[name] / med['storescp']:.2f}x")
        print(f"ratio {name}/storescp, 4 associations  : "
              f"{med[f'{name} x4'] / med['storescp x4']:.2f}x   (target <= 2.0x)")


def make_nodes(root: Path, args: argparse.Namespace) -> dict[str, Node]:
    """The receiving nodes: the edge alone, or one ``serve`` per redis fsync policy."""
    policies = [p.strip() for p in args.appendfsync.split(",")] if args.appendfsync else []
    nodes: dict[str, Node] = {}
    base = {"scp": {"allow_any": True, "max_associations": 8},
            "logging": {"level": "WARNING"}, "spool": {"fsync": not args.no_fsync}}
    if not policies:
        nodes["kneenode"] = Node(root=root / "node",
                                 config={**base, "completion": {"quiet_seconds": 3600,
                                                                "policy": "timer"}})  # ingest alone
    for policy in policies:
        nodes[f"kneenode {policy}"] = Node(root=root / f"node-{policy}", command="serve", config={
            **base, "completion": {"quiet_seconds": 0.5, "poll_seconds": 0.2},
            "logging": {"level": "INFO"},  # Node.start waits for serve's "node ready" line
            "jobs": {"chain": "tests.workers.chains:noop_chain", "redis_appendfsync": policy,
                     "gpu_devices": ["cpu"], "http_port": free_port()},
        })
    for node in nodes.values():
        node.root.mkdir()
    try:
        for node in nodes.values():
            node.start(timeout=300)  # serve starts redis and workers: slow on a loaded machine
    except BaseException:
        for node in nodes.values():
            node.stop()
        raise
    return nodes


if __name__ == "__main__":
    main()

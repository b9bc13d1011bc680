"""The GPU benchmark script runs end to end in its --tiny CPU mode (so it is known to work)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_segment_gpu_bench_tiny_on_cpu():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "bench" / "segment_gpu.py"), "--tiny", "--device",
         "cpu", "--repeat", "1", "--threads", "1"],
        # one thread, also for stock nnU-Net's export (it defaults to 8): no spin-waiting on CI
        env={**os.environ, "nnUNet_def_n_proc": "1"},
        check=False, capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    rows = [ln.split() for ln in lines if ln.startswith(("stock", "ours", "network"))]
    assert len(rows) == 8
    agree = [float(r[-1]) for r in rows if r[0] == "ours" and r[1] == "(native"]
    assert len(agree) == 2 and all(a > 0.9 for a in agree)

"""The GPU fitting benchmark runs end to end in its --tiny CPU mode, and its two loops agree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_shape_gpu_bench_tiny_on_cpu():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "bench" / "shape_gpu.py"), "--tiny", "--device", "cpu"],
        check=False, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.startswith(("plain", "vectorised"))]
    assert [r[0] for r in rows] == ["plain", "vectorised"]
    assert all(int(r[2]) == 30 for r in rows)  # the whole budget (early stop disabled)
    assert float(rows[1][-1]) < 1e-5  # same best latent as the plain loop
    assert abs(float(rows[0][-2]) - float(rows[1][-2])) < 1e-5  # same best loss

"""Benchmark: phantom generation, writing and reading back (not collected by pytest).

Run: .venv/bin/python tests/bench/phantom.py [--full]
Prints one row per case: make (in memory), write (DICOM + NIfTI + JSON), read_series.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from pipeline.phantom import make_phantom, write_phantom
from pipeline.series import read_series


def _case(preset: str, orientation: str, qdess: bool) -> tuple[float, float, float, int]:
    t0 = time.perf_counter()
    ph = make_phantom(1, preset, orientation=orientation, qdess=qdess)
    t1 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_phantom(ph, Path(tmp))
        t2 = time.perf_counter()
        read_series(paths.dicom_dir)
        t3 = time.perf_counter()
    return t1 - t0, t2 - t1, t3 - t2, len(paths.dicom_files)


def main() -> None:
    cases = [("small", "sagittal", False), ("small", "oblique", True)]
    if "--full" in sys.argv:
        cases += [("full", "sagittal", False), ("full", "oblique", True)]
    print(f"{'preset':6} {'orientation':11} {'qdess':5} {'files':>5} {'make s':>7} {'write s':>8} "
          f"{'read s':>7}")
    for preset, orientation, qdess in cases:
        make, write, read, n = _case(preset, orientation, qdess)
        print(f"{preset:6} {orientation:11} {qdess!s:5} {n:5d} {make:7.2f} {write:8.2f} {read:7.2f}")


if __name__ == "__main__":
    main()

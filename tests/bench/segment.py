"""Benchmark: demo-model segmentation time on the CPU (prints a table).

Run: ``.venv/bin/python tests/bench/segment.py [--full] [--threads N]``.

Rows: model load (cold, once per process), then warm prediction of small phantoms (sagittal and
coronal, TTA off/on) and, with ``--full``, one full-size 384x384x160 phantom. Times are wall
seconds of :func:`pipeline.segment.segment_image` (preprocessing, sliding window, export,
post-processing), i.e. the segment stage without file I/O.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import SimpleITK as sitk
import torch

from kneenode.settings import SegmentSettings
from pipeline.segment import load_model, segment_image, unload_all


def phantom_image(seed: int, preset: str, side: str, orientation: str) -> sitk.Image:
    """A phantom as a SimpleITK image (the series reader's output for its DICOM)."""
    from pipeline.phantom import make_phantom

    ph = make_phantom(seed, preset, side=side, orientation=orientation)
    img = sitk.GetImageFromArray(ph.image.astype(np.float32))
    img.SetSpacing(ph.grid.spacing)
    img.SetOrigin(ph.grid.origin)
    img.SetDirection(ph.grid.direction)
    return img


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    """Best wall time of ``repeat`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="also a 384x384x160 phantom (slow on CPU)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows: list[tuple[str, str, str, float]] = []
    unload_all()
    t_load, model = timed(lambda: load_model(SegmentSettings(device="cpu")))
    rows.append(("load demo model (cold)", "-", "-", t_load))
    cases = [("small sagittal", "small", "sagittal"), ("small coronal", "small", "coronal")]
    if args.full:
        cases.append(("full sagittal", "full", "sagittal"))
    for name, preset, orientation in cases:
        image = phantom_image(4242, preset, "left", orientation)
        for tta in (False, True):
            m = load_model(SegmentSettings(device="cpu", tta=tta))
            segment_image(image, m)  # warm-up (allocations, caches)
            reps = 1 if preset == "full" else args.repeat
            t, _ = timed(lambda i=image, mm=m: segment_image(i, mm), reps)
            rows.append((name, "x".join(map(str, image.GetSize())), "on" if tta else "off", t))
    print(f"demo model {model.card.version} on CPU, torch threads {torch.get_num_threads()}")
    print(f"{'case':<24} {'size':>12} {'TTA':>4} {'seconds':>9}")
    for name, size, tta, t in rows:
        print(f"{name:<24} {size:>12} {tta:>4} {t:9.3f}")


if __name__ == "__main__":
    main()

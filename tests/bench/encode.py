"""Encode benchmark: SEG + SR + overlay + PDF for a knee phantom series.

    .venv/bin/python tests/bench/encode.py [--preset full] [--runs 5] [--cache DIR] [--baseline]
                                           [--enhanced]

Generates the phantom (``full``: 160 x 384 x 384; cached under ``--cache`` as DICOM + label maps
because generating it takes a while), reads the series, then times each encoder and the
whole ``encode_results`` call (median of ``--runs`` after one warm-up run: workers keep their
imports and caches warm), plus serialising every object to bytes. ``--baseline`` also times
highdicom's own ``Segmentation`` on the same label map. ``--enhanced``: the same phantom as one
Enhanced MR object (the encoders work on views of its frames). Targets: SEG <= 1 s, all <= 3 s.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pydicom
import SimpleITK as sitk

from kneenode.settings import EncodeSettings
from pipeline.encode import (
    encode_overlay,
    encode_pdf,
    encode_results,
    encode_seg,
    encode_sr,
    write_results,
)
from pipeline.encode.common import load_source


def phantom_inputs(
    preset: str, cache: Path, enhanced: bool = False
) -> tuple[list[pydicom.Dataset], np.ndarray, dict[str, Any]]:
    """(sorted source datasets, canonical label map with subregions, results dict)."""
    import json

    from pipeline.phantom import make_phantom, write_phantom

    root = cache / f"phantom-{preset}-1{'-enhanced' if enhanced else ''}"
    if not (root / "truth" / "truth.json").exists():
        t0 = time.perf_counter()
        write_phantom(make_phantom(1, preset), root, enhanced=enhanced)
        print(f"phantom {preset} generated in {time.perf_counter() - t0:.1f} s -> {root}")
    datasets = load_source(sorted((root / "dicom").glob("*.dcm")), pixels=True)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "truth" / "subregions.nii.gz")))
    truth = json.loads((root / "truth" / "truth.json").read_text())
    results: dict[str, Any] = {
        "side": truth["side"],
        "bscore": 0.42,
        "nsm_assd_bone_mm": 0.6,
        "nsm_assd_cart_mm": 0.4,
    }
    for part in ("volumes_ml", "thickness_mm", "t2_ms"):
        results.update(truth.get(part, {}))
    return datasets, labels.astype(np.uint8), results


CPU: dict[int, float] = {}  # id(result) -> median CPU seconds, for the table


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    """Median wall time of ``runs`` calls after a warm-up (CPU time kept in :data:`CPU`)."""
    fn()  # warm-up
    times, cpu, out = [], [], None
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    CPU[len(CPU)] = statistics.median(cpu)
    return statistics.median(times), out


def to_bytes(datasets: list[pydicom.Dataset]) -> int:
    total = 0
    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        total += buf.tell()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="full", choices=["small", "full"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/kneenode-bench"))
    parser.add_argument("--baseline", action="store_true")
    parser.add_argument("--enhanced", action="store_true", help="one Enhanced MR source object")
    args = parser.parse_args()
    src, lab, res = phantom_inputs(args.preset, args.cache, args.enhanced)
    card = {
        "algorithm_name": "kneenode-phantom-demo",
        "algorithm_version": "0.1.0",
        "is_demo": True,
    }
    opts = EncodeSettings()
    print(
        f"series: {len(src)} x {src[0].Rows} x {src[0].Columns}, labels {sorted(np.unique(lab).tolist())}"
    )
    rows = []
    t_seg, seg = timed(
        lambda: encode_seg(source=src, labels=lab, model=card, side=res["side"], options=opts),
        args.runs,
    )
    rows.append(("SEG (9 segments, empty frames kept)", t_seg, f"{seg.NumberOfFrames} frames"))
    sub = EncodeSettings(seg_subregions=True)
    t, s2 = timed(lambda: encode_seg(source=src, labels=lab, model=card, options=sub), args.runs)
    rows.append(("SEG (14 segments incl. subregions)", t, f"{s2.NumberOfFrames} frames"))
    t, _ = timed(
        lambda: encode_sr(source=src, seg=seg, results=res, model=card, options=opts), args.runs
    )
    rows.append(("SR (TID 1500)", t, ""))
    t, ov = timed(
        lambda: encode_overlay(source=src, labels=lab, model=card, options=opts), args.runs
    )
    rows.append(("overlay (RGB SC series)", t, f"{len(ov)} images"))
    t, _ = timed(
        lambda: encode_pdf(source=src, labels=lab, results=res, model=card, options=opts), args.runs
    )
    rows.append(("PDF", t, ""))
    t_all, enc = timed(
        lambda: encode_results(source=src, labels=lab, results=res, model=card, options=opts),
        args.runs,
    )
    rows.append(("encode_results (SEG+SR+overlay+PDF)", t_all, ""))
    t, size = timed(lambda: to_bytes([d for _, d in enc.instances()]), args.runs)
    rows.append(("serialise all to bytes", t, f"{size / 1e6:.0f} MB"))
    with tempfile.TemporaryDirectory(dir=args.cache) as tmp:
        t, files = timed(lambda: write_results(enc, Path(tmp) / "out"), args.runs)
    rows.append(("write_results (files, fsync each)", t, f"{len(files)} files"))
    if args.baseline:
        rows.append(("highdicom Segmentation (baseline)", _baseline(src, lab, card, args.runs), ""))
    print(
        f"\n{'step':40s} {'wall s':>7s} {'cpu s':>7s}  note   (medians; load {os.getloadavg()[0]:.1f})"
    )
    for (name, seconds, note), cpu in zip(rows, CPU.values(), strict=True):
        print(f"{name:40s} {seconds:7.3f} {cpu:7.3f}  {note}")
    cpu = list(CPU.values())
    print(
        f"\ntargets (wall; cpu in brackets, what a quiet machine would show): "
        f"SEG <= 1 s: {'ok' if t_seg <= 1 else 'MISSED'} ({'ok' if cpu[0] <= 1 else 'MISSED'}), "
        f"all <= 3 s: {'ok' if t_all <= 3 else 'MISSED'} ({'ok' if cpu[5] <= 3 else 'MISSED'})"
    )


def _baseline(
    src: list[pydicom.Dataset], lab: np.ndarray, card: dict[str, Any], runs: int
) -> float:
    from tests.pipeline.encode.synthetic import highdicom_reference_seg

    def build() -> None:
        highdicom_reference_seg(src, lab, card).save_as(io.BytesIO())

    return timed(build, max(1, runs // 2))[0]


if __name__ == "__main__":
    main()

"""Benchmark: quantification (side + subregions + thickness + volumes) on a `full` phantom.

Run: .venv/bin/python tests/bench/quantify.py [--repeat 5] [--cache /tmp/full1.npz]
                                              [--medium] [--demo] [--demo-model DIR]

Prints (1) the time of each step on the 384x384x160 phantom (median of ``--repeat`` runs; the
phantom itself takes ~20 s to make, ``--cache`` keeps it between runs), (2) the thickness error
per region against the analytic truth there, (3) with ``--medium`` the same errors on the three
medium test phantoms, and (4) with ``--demo`` (the phantom demo model, trained on the ``small``
preset) the thickness errors on small phantoms computed from the truth label map and from the
model's segmentation side by side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.phantom import make_phantom
from pipeline.quantify import THICKNESS_REGIONS, Geometry, quantify

STEPS = ("side", "subregions", "thickness", "volumes")


def _full(cache: Path | None) -> tuple[np.ndarray, Geometry, dict[str, Any]]:
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=True)
        return z["labels"], Geometry.of(*z["geom"]), z["truth"].item()
    t0 = time.perf_counter()
    ph = make_phantom(1, "full")
    print(f"made the full phantom in {time.perf_counter() - t0:.1f} s")
    geom = Geometry.of(ph.grid.spacing, ph.grid.origin, ph.grid.direction)
    if cache is not None:
        np.savez(cache, labels=ph.labels, geom=np.array([geom.spacing, geom.origin, geom.direction], dtype=object),
                 truth=np.array(ph.truth, dtype=object))
    return ph.labels, geom, ph.truth


def _errors(results: dict[str, Any], truth: dict[str, Any]) -> dict[str, float]:
    out = {}
    for region in THICKNESS_REGIONS:
        value = results[f"{region}_mm_mean"]
        out[region] = float("nan") if value is None else value - truth["thickness_mm"][f"{region}_mm_mean"]
    return out


def timing(labels: np.ndarray, geom: Geometry, truth: dict[str, Any], repeat: int) -> None:
    runs, totals = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        q = quantify(labels, geom)
        totals.append(time.perf_counter() - t0)
        runs.append(q.results["seconds"])
    print(f"\nfull phantom {labels.shape[::-1]} (i, j, k), {repeat} runs, median seconds")
    print(f"{'step':12} {'median s':>9} {'min s':>7}")
    for step in STEPS:
        vals = [r[step] for r in runs]
        print(f"{step:12} {statistics.median(vals):9.3f} {min(vals):7.3f}")
    print(f"{'total':12} {statistics.median(totals):9.3f} {min(totals):7.3f}   (target <= 2 s)")
    print("vertices per bone:", {b: int(v.vertices.shape[0]) for b, v in q.bones.items()})
    errs = _errors(q.results, truth)
    print(f"\n{'region':20} {'truth mm':>8} {'mean mm':>8} {'error':>7} {'median':>7} {'std':>6} {'vertices':>8}")
    for region, err in errs.items():
        r = q.results
        print(f"{region:20} {truth['thickness_mm'][f'{region}_mm_mean']:8.3f} {r[f'{region}_mm_mean']:8.3f} "
              f"{err:+7.3f} {r[f'{region}_mm_median']:7.3f} {r[f'{region}_mm_std']:6.3f} "
              f"{r['thickness_vertices'][region]:8d}")
    vol = {k: q.results[k] / v - 1 for k, v in truth["volumes_ml"].items()}
    print("volume relative errors:", " ".join(f"{k} {v:+.4f}" for k, v in vol.items()))


def medium() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for tests.*
    from tests.pipeline.quantify.conftest import MEDIUM_CASES, medium_phantom

    rows, vol_err = [], 0.0
    for case in MEDIUM_CASES:
        ph = medium_phantom(*case)
        geom = Geometry.of(ph.grid.spacing, ph.grid.origin, ph.grid.direction)
        res = quantify(ph.labels, geom).results
        rows.append(_errors(res, ph.truth))
        volumes: dict[str, float] = ph.truth["volumes_ml"]  # type: ignore[assignment]
        vol_err = max(vol_err, *(abs(res[k] / v - 1) for k, v in volumes.items()))
    print("\nmedium test phantoms: thickness error (mm) per phantom and MAE")
    for region in THICKNESS_REGIONS:
        errs = [r[region] for r in rows]
        print(f"{region:20} {' '.join(f'{e:+.3f}' for e in errs)}   MAE {np.mean(np.abs(errs)):.3f}")
    print(f"largest volume relative error: {vol_err:.4f}")


def demo(model_dir: Path, seeds: tuple[int, ...] = (101, 102, 103)) -> None:
    import SimpleITK as sitk

    from kneenode.settings import SegmentSettings
    from pipeline.phantom import grid_image
    from pipeline.segment import load_model, segment_image

    if not (model_dir / "dataset.json").is_file():
        print(f"\ndemo model: none trained at {model_dir} (run python -m pipeline.segment.train_demo)")
        return
    model = load_model(SegmentSettings(model_dir=model_dir, device="cpu"))
    print("\nsmall phantoms: thickness error (mm), truth label map | demo model segmentation")
    table: dict[str, list[tuple[float, float]]] = {r: [] for r in THICKNESS_REGIONS}
    for seed, orientation in zip(seeds, ("sagittal", "coronal", "oblique"), strict=False):
        ph = make_phantom(seed, "small", orientation=orientation)
        geom = Geometry.of(ph.grid.spacing, ph.grid.origin, ph.grid.direction)
        seg = sitk.GetArrayFromImage(segment_image(grid_image(ph.image, ph.grid), model))
        e_truth = _errors(quantify(ph.labels, geom).results, ph.truth)
        e_model = _errors(quantify(seg, geom).results, ph.truth)
        for region in THICKNESS_REGIONS:
            table[region].append((e_truth[region], e_model[region]))
    def cell(v: float) -> str:
        return "  null" if np.isnan(v) else f"{v:+.3f}"

    def mae(vals: list[float]) -> str:
        ok = [abs(v) for v in vals if not np.isnan(v)]
        return f"{np.mean(ok):.3f} ({len(ok)}/{len(vals)})" if ok else "null"

    for region, pairs in table.items():
        cells = " ".join(f"{cell(a)}|{cell(b)}" for a, b in pairs)
        print(f"{region:20} {cells}   MAE truth {mae([a for a, _ in pairs])} model {mae([b for _, b in pairs])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--medium", action="store_true")
    ap.add_argument("--demo", action="store_true", help="also segment small phantoms with the demo model")
    ap.add_argument("--demo-model", type=Path, default=None, help="trained-model folder (default: the demo)")
    args = ap.parse_args()
    labels, geom, truth = _full(args.cache)
    timing(labels, geom, truth, args.repeat)
    if args.medium:
        medium()
    if args.demo or args.demo_model is not None:
        from kneenode.settings import DEMO_MODEL_DIR

        demo(args.demo_model or DEMO_MODEL_DIR)


if __name__ == "__main__":
    main()

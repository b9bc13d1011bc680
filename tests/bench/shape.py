"""Benchmark: NSM fit + BScore with the small PHANTOM DEMO model on the CPU.

``.venv/bin/python tests/bench/shape.py [--threads 1] [--iterations 2000] [--points 20000]``

For held-out phantom femurs (posed label maps like the small phantom preset, right and left
knees), times each part of the ``shape`` stage: surfaces (clip, marching cubes, cross-surface
SDF targets), mean shape (first call only: it is cached per loaded model), similarity ICP, the
latent fit (iterations until early stop, ms per iteration) and reconstruction + ASSD; prints ASSD
and BScore. Defaults are the reference budget (2000 iterations, 20 000 points per iteration, 50
patience) and the stage defaults (mean shape 128^3, reconstruction 256^3 adaptive from 64^3).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from kneenode.settings import NsmSettings
from pipeline.shape.demo_shapes import FemurShape, femur_anatomy, posed_label_map
from pipeline.shape.stage import load_shape_models, mean_shape, shape_stage

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "models" / "nsm_demo"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--points", type=int, default=20000)
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--type", default="bone_and_cart", choices=("bone_only", "bone_and_cart"))
    ap.add_argument("--implementation", default="vectorised", choices=("vectorised", "plain"))
    ap.add_argument("--mean-res", type=int, default=128)
    ap.add_argument("--recon-res", type=int, default=256)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = NsmSettings(type=args.type, bone_cart_model=DEMO / "femur_bone_cart",
                    bone_cart_bscore=DEMO / "bscore_bone_cart", bone_only_model=DEMO / "femur_bone",
                    bone_only_bscore=DEMO / "bscore_bone", device="cpu", iterations=args.iterations,
                    points=args.points, mean_shape_resolution=args.mean_res,
                    recon_resolution=args.recon_res, implementation=args.implementation)
    t0 = time.perf_counter()
    models = load_shape_models(s)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    mean_shape(models.nsm[args.type], s.mean_shape_resolution)
    t_mean = time.perf_counter() - t0
    print(f"cpu, {args.threads} thread(s); model load {t_load:.2f} s; mean shape "
          f"{s.mean_shape_resolution}^3 {t_mean:.2f} s (once per model); {args.type}, "
          f"{args.implementation}, {args.iterations} it x {args.points} pts")
    print(f"{'case':<16}{'side':>6}{'iters':>7}{'fit s':>8}{'ms/it':>8}{'other s':>9}{'total s':>9}"
          f"{'ASSD bone':>11}{'ASSD cart':>11}{'BScore':>8}")
    rng = np.random.default_rng(2026)
    for i in range(args.cases):
        shape = FemurShape.random(rng)
        side = ("right", "left")[i % 2]
        labels, geom = posed_label_map(femur_anatomy(shape, 0.42 * float(rng.uniform(0.92, 1.08))),
                                       side=side, rotation_deg=tuple(rng.uniform(-10, 10, 3)),
                                       bulge=shape.medial_bulge)
        t0 = time.perf_counter()
        res = shape_stage(labels, geom.spacing, geom.direction, geom.origin, models=models, settings=s)
        total = time.perf_counter() - t0
        fit = res["nsm_fits"][args.type]
        cart = f"{res['nsm_assd_cart_mm']:.3f}" if res["nsm_assd_cart_mm"] is not None else "-"
        print(f"{f'oa={shape.oa:.2f}':<16}{side:>6}{fit['iterations']:>7}{fit['fit_seconds']:>8.2f}"
              f"{1000 * fit['fit_seconds'] / fit['iterations']:>8.1f}{total - fit['fit_seconds']:>9.2f}"
              f"{total:>9.2f}{res['nsm_assd_bone_mm']:>11.3f}{cart:>11}{res['bscore']:>8.2f}")


if __name__ == "__main__":
    main()

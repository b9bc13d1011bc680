"""Benchmark: one NSM latent fit with the FULL-size triplanar decoder, vectorised vs plain loop.

Run on a GPU host: ``.venv/bin/python tests/bench/shape_gpu.py``; anywhere (CI, CPU):
``.venv/bin/python tests/bench/shape_gpu.py --tiny --device cpu``.

Decoder: the public ShapeMedKnee architecture (latent 512, fc -> 512x2x2, five transposed convs
with layer norm to 64x64, three 128-channel planes, MLP 3x512 with weight norm, 2 objects),
random weights (timing does not depend on them), or ``--model FOLDER`` for a real one. Data: two
nested synthetic surfaces (a "bone" ellipsoid and a "cartilage" shell) with SDF targets; 20 000
points per iteration split between them, 2000 iterations. Early stopping is disabled
(patience > iterations) so every row runs the whole budget and the times compare like for like.

Rows (each after a short warm-up; best of ``--repeat``):

* ``plain``: torch.optim.Adam, one grid_sample per plane, ``loss.item()`` every iteration;
* ``vectorised``: on-device loop (one grid_sample for the three planes, device RNG, Adam as tensor
  ops, masked best-latent bookkeeping, one host sync per 25 iterations);
* ``vectorised tf32``: the same with TF32 matmul/conv on a GPU (rows skipped on CPU).

``dz`` is the largest difference of the best latent to the plain row (same seed, same samples).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from pipeline.shape.decoder import DecoderConfig, build_decoder, count_parameters
from pipeline.shape.fit import FitOptions, fit_latent

FULL = DecoderConfig()  # the public architecture
TINY = DecoderConfig(latent_size=16, n_objects=2, conv_hidden_dims=(8, 8, 8), sdf_latent_size=8,
                     sdf_hidden_dims=(32, 32, 32))


def synthetic_surfaces(n: int, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Bone: ellipsoid (0.7, 0.5, 0.6); cartilage: the outer half of a 0.03-thicker shell."""
    rng = np.random.default_rng(0)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    axes = np.array([0.7, 0.5, 0.6])
    bone = d * axes
    cart_d = d[d[:, 1] > -0.2]
    cart = cart_d * (axes + 0.03)
    t_bone = np.stack([np.zeros(len(bone)), np.full(len(bone), 0.03)], axis=1)
    t_cart = np.stack([np.full(len(cart), 0.03), np.zeros(len(cart))], axis=1)
    f = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device)
    return [f(bone), f(cart)], [f(t_bone), f(t_cart)]


def run(decoder: torch.nn.Module, surfaces, targets, opts: FitOptions, repeat: int,
        device: torch.device) -> tuple[float, object]:
    warm = replace(opts, iterations=min(10, opts.iterations))
    fit_latent(decoder, surfaces, targets, warm)
    best, result = float("inf"), None
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        result = fit_latent(decoder, surfaces, targets, opts)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best, result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny decoder, 30 iterations, 600 points")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--points", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--model", default=None, help="NSM model folder instead of random weights")
    ap.add_argument("--skip-plain", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    iterations = args.iterations or (30 if args.tiny else 2000)
    points = args.points or (600 if args.tiny else 20000)
    if args.model:
        from pipeline.shape.model import load_model

        decoder = load_model(args.model, device=str(device)).decoder
    else:
        torch.manual_seed(0)
        decoder = build_decoder(TINY if args.tiny else FULL).to(device).eval()
        for p in decoder.parameters():
            p.requires_grad_(False)
    surfaces, targets = synthetic_surfaces(50000 if not args.tiny else 4000, device)
    opts = FitOptions(iterations=iterations, points=points, patience=iterations + 1, seed=0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; decoder {count_parameters(decoder) / 1e6:.2f} M parameters, "
          f"planes {decoder.cfg.plane_size}x{decoder.cfg.plane_size}x{decoder.cfg.sdf_latent_size}x3, "
          f"latent {decoder.cfg.latent_size}; {iterations} iterations x {points} points")
    print(f"{'implementation':<22}{'precision':>10}{'iters':>7}{'seconds':>10}{'ms/iter':>9}"
          f"{'loss':>11}{'dz':>10}")
    rows = [("plain", "fp32"), ("vectorised", "fp32")]
    if device.type == "cuda":
        rows.append(("vectorised", "tf32"))
    if args.skip_plain:
        rows = rows[1:]
    ref = None
    for impl, prec in rows:
        torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
        torch.backends.cudnn.allow_tf32 = prec == "tf32"
        secs, res = run(decoder, surfaces, targets, replace(opts, implementation=impl), args.repeat, device)
        ref = res.latent if ref is None else ref
        dz = float(np.abs(res.latent - ref).max())
        print(f"{impl:<22}{prec:>10}{res.iterations:>7}{secs:>10.2f}{1000 * secs / res.iterations:>9.2f}"
              f"{res.loss:>11.5f}{dz:>10.2e}")


if __name__ == "__main__":
    main()

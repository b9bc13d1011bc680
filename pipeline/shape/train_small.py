"""Train a small PHANTOM DEMO neural shape model (+ BScore folder) in the public folder format.

Not a clinical model: it is trained on synthetic phantom femurs (:mod:`pipeline.shape.demo_shapes`)
so the tests and the demo node have a model of the real format (``model_params_config.json`` +
``model/<epoch>.pth`` with the public state-dict names, and a BScore ``model.json``) that fits in
the repository. Architecture as the public triplanar decoder with reduced widths.

Usage::

    python -m pipeline.shape.train_small --out models/nsm_demo --objects 2 --minutes 8

Writes ``<out>/femur_bone_cart`` (or ``femur_bone`` for ``--objects 1``) and
``<out>/bscore_bone_cart`` (``bscore_bone``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.phantom.geometry import DEFAULT_THICKNESS_MM
from pipeline.shape.decoder import (
    DecoderConfig,
    TriplanarDecoder,
    build_decoder,
    config_dict,
    public_state_dict,
)
from pipeline.shape.demo_shapes import FemurShape, canonical_label_map, femur_anatomy
from pipeline.shape.surfaces import prepare_surfaces, signed_distance

DEMO_CONFIG = DecoderConfig(latent_size=16, n_objects=2, conv_hidden_dims=(32, 32, 16, 16, 8),
                            sdf_latent_size=16, sdf_hidden_dims=(64, 64, 64))
SIGMAS = (0.008, 0.025)  # near-surface noise in normalised units
TRAIN_CLAMP = 0.2
HEALTHY_OA, OA_OA = 0.35, 0.65


@dataclass
class ShapeSamples:
    """Normalised SDF samples of one training shape."""

    points: np.ndarray  # (P, 3) float32
    sdf: np.ndarray  # (P, n_objects) float32
    oa: float


def shape_samples(shape: FemurShape, scale: float, rng: np.random.Generator, n_objects: int,
                  n_points: int = 12000, spacing_mm: float = 0.6) -> ShapeSamples:
    """Label map -> prepared surfaces (as a fit would see them) -> normalised SDF samples."""
    thick = {k: v * float(rng.uniform(0.85, 1.15)) for k, v in DEFAULT_THICKNESS_MM.items()}
    labels, geom = canonical_label_map(femur_anatomy(shape, scale, thick), spacing_mm,
                                       bulge=shape.medial_bulge)
    knee = prepare_surfaces(labels, geom, with_cartilage=n_objects == 2, side="right")
    surfaces = [knee.bone] + ([knee.cartilage] if knee.cartilage is not None else [])
    centre = knee.bone.vertices.mean(axis=0)
    radius = float(np.linalg.norm(knee.bone.vertices - centre, axis=1).max())
    per = int(n_points * 0.9) // (2 * len(surfaces))
    chunks = []
    for surf in surfaces:
        for sigma in SIGMAS:
            v = surf.vertices[rng.integers(0, len(surf.vertices), per)]
            chunks.append(v + rng.normal(0.0, sigma * radius, v.shape))
    chunks.append(centre + rng.uniform(-1.0, 1.0, (n_points - per * 2 * len(surfaces), 3)) * radius)
    pts = np.concatenate(chunks)
    sdf = np.stack([signed_distance(s, pts) for s in surfaces], axis=1) / radius
    return ShapeSamples(points=((pts - centre) / radius).astype(np.float32),
                        sdf=sdf.astype(np.float32), oa=shape.oa)


def make_dataset(n_shapes: int, seed: int, n_objects: int) -> list[ShapeSamples]:
    """``n_shapes`` random shapes with ``oa`` spread evenly over [0, 1] (deterministic)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_shapes):
        oa = (i + float(rng.uniform())) / n_shapes
        shape = FemurShape.random(rng, oa=oa)
        out.append(shape_samples(shape, float(rng.uniform(0.45, 0.55)), rng, n_objects))
    return out


def save_cache(path: Path, data: list[ShapeSamples]) -> None:
    """The generated samples (slow to make on a busy CPU), for ``--resume``."""
    arrays = {f"p{i}": d.points for i, d in enumerate(data)}
    arrays.update({f"s{i}": d.sdf for i, d in enumerate(data)})
    arrays["oa"] = np.array([d.oa for d in data])
    np.savez(path, **arrays)  # type: ignore[arg-type]


def load_cache(path: Path) -> list[ShapeSamples] | None:
    """Samples saved by :func:`save_cache` (plain arrays, no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        oa = z["oa"]
        return [ShapeSamples(points=z[f"p{i}"], sdf=z[f"s{i}"], oa=float(oa[i])) for i in range(len(oa))]


def train(data: list[ShapeSamples], cfg: DecoderConfig, minutes: float, seed: int,
          batch_shapes: int = 8, points_per_shape: int = 1500,
          resume: tuple[dict, torch.Tensor, int] | None = None,
          lr_scale: float = 1.0) -> tuple[TriplanarDecoder, torch.Tensor, int]:
    """Auto-decoder training (decoder and one latent per shape) for a wall-clock budget.

    ``resume`` = (state dict, latents, steps) continues an earlier run (``--resume``).
    """
    torch.manual_seed(seed + (resume[2] if resume else 0))
    dec = build_decoder(cfg)
    lat = torch.nn.Parameter(torch.randn(len(data), cfg.latent_size) * 0.01)
    step0 = 0
    if resume is not None:
        dec.load_state_dict(resume[0], strict=True)
        lat.data.copy_(resume[1])
        step0 = resume[2]
    pts = [torch.from_numpy(d.points) for d in data]
    sdf = [torch.from_numpy(d.sdf) for d in data]
    opt = torch.optim.Adam([{"params": dec.parameters(), "lr": 2e-3}, {"params": [lat], "lr": 4e-3}])
    gen = torch.Generator().manual_seed(seed)
    deadline = time.monotonic() + minutes * 60.0
    step, t0 = step0, time.monotonic()
    while time.monotonic() < deadline:
        frac = (time.monotonic() - t0) / (minutes * 60.0)
        for gi, base in enumerate((2e-3 * lr_scale, 4e-3 * lr_scale)):
            opt.param_groups[gi]["lr"] = base * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0))))
        idx = torch.randperm(len(data), generator=gen)[:batch_shapes]
        sel = [torch.randint(0, len(pts[i]), (points_per_shape,), generator=gen) for i in idx.tolist()]
        xyz = torch.stack([pts[i][s] for i, s in zip(idx.tolist(), sel, strict=True)])
        tgt = torch.stack([sdf[i][s] for i, s in zip(idx.tolist(), sel, strict=True)])
        pred = dec.sdf(dec.planes(lat[idx]), xyz)
        loss = (pred.clamp(-TRAIN_CLAMP, TRAIN_CLAMP) - tgt.clamp(-TRAIN_CLAMP, TRAIN_CLAMP)).abs().mean()
        loss = loss + 1e-4 * lat[idx].pow(2).sum(dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 500 == 0:
            print(f"step {step:6d}  loss {loss.item():.5f}  {time.monotonic() - t0:6.0f} s", flush=True)
    return dec, lat.detach(), step


def bscore_constants(latents: np.ndarray, oa: np.ndarray) -> dict[str, object]:
    """Unit vector (mean "OA" - mean "healthy" latent) and the healthy projection statistics."""
    healthy, diseased = oa < HEALTHY_OA, oa > OA_OA
    v = latents[diseased].mean(axis=0) - latents[healthy].mean(axis=0)
    v = v / np.linalg.norm(v)
    proj = latents[healthy] @ v
    return {"bscore_vector": v.tolist(), "mean_healthy": float(proj.mean()),
            "std_healthy": float(proj.std(ddof=1))}


def write_model(out: Path, name: str, dec: TriplanarDecoder, lat: torch.Tensor, cfg: DecoderConfig,
                steps: int, n_shapes: int, seed: int) -> Path:
    """Model folder in the public layout (+ ``latent_codes/<steps>.pth``, the training latents)."""
    folder = out / name
    (folder / "model").mkdir(parents=True, exist_ok=True)
    config = config_dict(cfg)
    config.update({
        "EXP_NAME": name, "demo": True,
        "description": "PHANTOM DEMO MODEL trained on synthetic phantom femurs by "
                       "pipeline/shape/train_small.py - NOT for clinical use",
        "version": "demo-1", "tissues": "bone_cartilage" if cfg.n_objects == 2 else "bone",
        "center_pts": True, "normalize_pts": True, "scale_method": "max_rad",
        "n_training_shapes": n_shapes, "training_steps": steps, "seed": seed,
        "clamp_dist_recon": 0.1, "lr_recon": 0.005, "lr_update_factor_recon": 1.1,
        "num_iterations_recon": 2000, "n_samples_latent_recon": 20000,
        "convergence_patience_recon": 50,
    })
    (folder / "model_params_config.json").write_text(json.dumps(config, indent=2) + "\n")
    for old in (folder / "model").glob("*.pth"):
        old.unlink()
    state = {"epoch": steps, "model": public_state_dict(dec), "optimizer": {}}
    torch.save(state, folder / "model" / f"{steps}.pth")
    (folder / "latent_codes").mkdir(exist_ok=True)
    for old in (folder / "latent_codes").glob("*.pth"):
        old.unlink()
    torch.save({"epoch": steps, "latent_codes": {"weight": lat}},
               folder / "latent_codes" / f"{steps}.pth")
    return folder


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("models/nsm_demo"))
    ap.add_argument("--objects", type=int, choices=(1, 2), default=2)
    ap.add_argument("--shapes", type=int, default=96)
    ap.add_argument("--minutes", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--resume", action="store_true", help="continue the model already in --out")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = DecoderConfig(**{**DEMO_CONFIG.__dict__, "n_objects": args.objects, "extra": {}})
    suffix = "bone_cart" if args.objects == 2 else "bone"
    t0 = time.monotonic()
    cache = Path(tempfile.gettempdir()) / f"kneenode_nsm_demo_{suffix}_{args.shapes}_{args.seed}.npz"
    data = load_cache(cache) if cache.exists() else None
    if data is None:
        data = make_dataset(args.shapes, args.seed, args.objects)
        save_cache(cache, data)
    print(f"dataset: {len(data)} shapes in {time.monotonic() - t0:.0f} s", flush=True)
    resume = None
    if args.resume:
        from pipeline.shape.model import load_state_dict, pick_checkpoint

        path, ep = pick_checkpoint(args.out / f"femur_{suffix}")
        codes = torch.load(args.out / f"femur_{suffix}" / "latent_codes" / f"{ep}.pth", weights_only=True)
        resume = (load_state_dict(path), codes["latent_codes"]["weight"], ep)
    dec, lat, steps = train(data, cfg, args.minutes, args.seed, resume=resume,
                            lr_scale=0.5 if args.resume else 1.0)
    folder = write_model(args.out, f"femur_{suffix}", dec, lat, cfg, steps, len(data), args.seed)
    consts = bscore_constants(lat.numpy(), np.array([d.oa for d in data]))
    consts.update({"name": f"phantom-demo-bscore-{suffix}", "version": "demo-1", "demo": True,
                   "model": folder.name, "latent_size": cfg.latent_size,
                   "description": "PHANTOM DEMO BScore: vector from synthetic 'oa' shapes"})
    bfolder = args.out / f"bscore_{suffix}"
    bfolder.mkdir(parents=True, exist_ok=True)
    (bfolder / "model.json").write_text(json.dumps(consts, indent=2) + "\n")
    print(f"wrote {folder} and {bfolder} after {steps} steps, {time.monotonic() - t0:.0f} s")


if __name__ == "__main__":
    main()

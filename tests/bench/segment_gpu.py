"""Benchmark: full-size ResEnc-M (random weights) on a 160x384x384 volume, ours vs stock nnU-Net.

Run on a GPU host: ``.venv/bin/python tests/bench/segment_gpu.py``; anywhere (CI, CPU):
``.venv/bin/python tests/bench/segment_gpu.py --tiny --device cpu``.

The architecture is the public knee model's (nnUNetResEncUNetMPlans 3d_fullres: 6 stages 32..320
features, residual blocks 1-3-4-6-6-6, patch 96x192x192), written as an nnU-Net v2 trained-model
folder with random weights and loaded by both implementations from the same weights:

* ``ours``: :func:`pipeline.segment.segment_array` (batched tiles, fp16, device-side export),
  with and without our post-processing;
* ``stock``: ``nnUNetPredictor.predict_single_npy_array`` (perform_everything_on_device=True);
* ``network only``: the forward passes of all tiles, nothing else (the lower bound).

Each row: TTA off/on, best wall time of ``--repeat`` runs after one warm-up, and for ``ours`` the
label agreement with stock (random weights give near-ties, so a few % disagreement is expected).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

FULL = {
    "features": [32, 64, 128, 256, 320, 320],
    "blocks": [1, 3, 4, 6, 6, 6],
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]],
    "patch": [96, 192, 192],
    "spacing": [0.7, 0.365, 0.365],
    "shape": (160, 384, 384),
}
TINY = {
    "features": [4, 8, 16],
    "blocks": [1, 1, 1],
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    "patch": [16, 32, 32],
    "spacing": [1.4, 0.8, 0.8],
    "shape": (24, 56, 48),
}


def write_random_model(root: Path, cfg: dict[str, Any]) -> Path:
    """An nnU-Net v2 trained-model folder with He-initialised random weights."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from pipeline.segment import folder as mf
    from pipeline.segment.labels import PUBLIC_MODEL_LABELS
    from pipeline.segment.model import build_network

    plans = mf.resenc_plans(
        dataset_name="Dataset500_KneeMRI", plans_name="nnUNetResEncUNetMPlans",
        patch_size=cfg["patch"], spacing=cfg["spacing"], features=cfg["features"],
        blocks=cfg["blocks"], strides=cfg["strides"],
    )
    dataset = mf.dataset_json("Dataset500_KneeMRI", PUBLIC_MODEL_LABELS)
    pm = PlansManager(plans)
    torch.manual_seed(0)
    net = build_network(pm, pm.get_configuration("3d_fullres"), dataset)
    net.apply(net.initialize)
    folder = root / "Dataset500_KneeMRI" / "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres"
    return mf.write_trained_model(folder, plans=plans, dataset=dataset, configuration="3d_fullres",
                                  weights={"0": net.state_dict()})


def volume(shape: tuple[int, int, int]) -> np.ndarray:
    """A smooth positive volume with noise (no zero background, so nothing is cropped)."""
    rng = np.random.default_rng(0)
    axes = [np.linspace(-1, 1, s, dtype=np.float32) for s in shape]
    zz, yy, xx = np.meshgrid(*axes, indexing="ij", sparse=True)
    vol = 300 + 200 * np.exp(-3 * (zz**2 + yy**2 + xx**2)) + rng.normal(0, 20, shape)
    return vol.astype(np.float32)


def best_time(fn: Callable[[], Any], device: torch.device, repeat: int) -> tuple[float, Any]:
    """Best wall time after one warm-up call (CUDA synchronised)."""
    out = fn()
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best, out


def network_only(model: Any, vol: np.ndarray, spacing: list[float]) -> Callable[[], None]:
    """All tiles (and flips) through the network in fp16 batches, nothing else."""
    from pipeline.segment.predict import _flip_sets, preprocess, tile_slices

    data, _ = preprocess(model, vol, spacing)
    data = data.to(model.device)
    tiles = tile_slices(data.shape[1:], model.patch_size, model.settings.tile_step_size)
    flips = _flip_sets(model.mirror_axes, model.settings.tta)
    n = model.settings.tile_batch_size
    use_amp = model.device.type == "cuda"

    @torch.inference_mode()
    def run() -> None:
        with torch.autocast("cuda", dtype=torch.float16) if use_amp else torch.no_grad():
            x = torch.stack([data[(slice(None), *s)] for s in tiles])
            x = torch.cat([torch.flip(x, f) if f else x for f in flips])
            for chunk in x.split(n):
                model.networks[0](chunk)

    return run


def main() -> None:
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from kneenode.settings import SegmentSettings
    from pipeline.segment import load_model, segment_array, unload_all
    from pipeline.segment.predict import predict_native

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny network and volume (CPU smoke test)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tile-batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TINY if args.tiny else FULL
    device = torch.device(args.device)
    vol, spacing = volume(cfg["shape"]), cfg["spacing"]
    rows: list[tuple[str, str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_random_model(Path(tmp), cfg)
        for tta in (False, True):
            unload_all()
            base = SegmentSettings(model_dir=folder, device=args.device, tta=tta,
                                   tile_batch_size=args.tile_batch, postprocess=False)
            model = load_model(base)
            stock = nnUNetPredictor(tile_step_size=0.5, use_mirroring=tta, device=device,
                                    perform_everything_on_device=True, allow_tqdm=False)
            stock.manual_initialization(
                model.networks[0], model.plans_manager, model.configuration_manager,
                [model.networks[0].state_dict()], model.dataset_json, "nnUNetTrainer",
                model.mirror_axes,
            )
            t_stock, ref = best_time(
                lambda s=stock: s.predict_single_npy_array(vol[None], {"spacing": list(spacing)}),
                device, args.repeat)
            t_ours, nat = best_time(lambda m=model: predict_native(m, vol, spacing), device, args.repeat)
            post = load_model(base.model_copy(update={"postprocess": True}))
            t_post, _ = best_time(lambda m=post: segment_array(vol, spacing, m), device, args.repeat)
            t_net, _ = best_time(network_only(model, vol, spacing), device, args.repeat)
            agree = f"{(np.asarray(nat) == np.asarray(ref)).mean():.3f}"
            mode = "on" if tta else "off"
            rows += [("stock nnUNetPredictor", mode, t_stock, "-"),
                     ("ours (native labels)", mode, t_ours, agree),
                     ("ours + remap + postprocess", mode, t_post, "-"),
                     ("network only", mode, t_net, "-")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{'tiny' if args.tiny else 'ResEnc-M'} on {name}, volume {cfg['shape']}, "
          f"patch {cfg['patch']}, tile batch {args.tile_batch}, torch {torch.__version__}")
    print(f"{'implementation':<28} {'TTA':>4} {'seconds':>9} {'agree':>6}")
    for impl, mode, t, agree in rows:
        print(f"{impl:<28} {mode:>4} {t:9.3f} {agree:>6}")


if __name__ == "__main__":
    main()

"""The ``shape`` stage as a plain function: canonical label map in, NSM results dict out.

Flow per fit (``nsm.type`` = bone_only, bone_and_cart or both):

1. surfaces of the clipped femur (+ femoral cartilage), left knees mirrored in x
   (:mod:`pipeline.shape.surfaces`);
2. similarity ICP of the femur onto the model's mean shape (zero latent), then the model's own
   normalisation (centre at the femur's mean vertex, divide by its max radius)
   (:mod:`pipeline.shape.icp`);
3. latent fit (:mod:`pipeline.shape.fit`) on the surface vertices: SDF 0 on their own surface,
   the signed distance to the other surface as the second target;
4. reconstructed meshes mapped back to patient space; ASSD (mm) to the input surfaces; BScore.

The function is pure (arrays in, dict out); :func:`shape_to_folder` writes ``shape.json`` (and
PLY meshes when asked) atomically for the jobs layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import NsmSettings
from pipeline.shape.fit import FitOptions, assd, fit_latent, latent_surfaces
from pipeline.shape.icp import Similarity, normalising_similarity, similarity_icp
from pipeline.shape.model import BScoreModel, NsmModel, load_bscore, load_model
from pipeline.shape.surfaces import Geometry, KneeSurfaces, prepare_surfaces, signed_distance

RESULTS_FILE = "shape.json"
VARIANTS = {"bone_only": ("bone_only_model", "bone_only_bscore"),
            "bone_and_cart": ("bone_cart_model", "bone_cart_bscore")}


@dataclass
class ShapeModels:
    """Models loaded once per worker: per variant the NSM and (optionally) its BScore."""

    nsm: dict[str, NsmModel]
    bscore: dict[str, BScoreModel | None]
    device: str


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def variants_for(kind: str) -> list[str]:
    """Fits run for ``nsm.type`` (the first is the primary one, reported under plain keys)."""
    return ["bone_and_cart", "bone_only"] if kind == "both" else [kind]


def load_shape_models(settings: NsmSettings) -> ShapeModels:
    """Load the model (and BScore) folders the settings name for ``settings.type``."""
    device = resolve_device(settings.device)
    nsm: dict[str, NsmModel] = {}
    bscore: dict[str, BScoreModel | None] = {}
    for variant in variants_for(settings.type):
        model_key, bscore_key = VARIANTS[variant]
        folder = getattr(settings, model_key)
        if folder is None:
            raise NodeError(ErrorCode.CONFIG_ERROR, f"nsm.{model_key} is required for nsm.type={settings.type}")
        model = load_model(folder, device=device, epoch=settings.epoch)
        want = 2 if variant == "bone_and_cart" else 1
        if model.n_objects != want:
            raise NodeError(ErrorCode.CONFIG_ERROR,
                            f"nsm.{model_key}: model has {model.n_objects} objects, {variant} needs {want}")
        nsm[variant] = model
        bfolder = getattr(settings, bscore_key)
        bscore[variant] = load_bscore(bfolder) if bfolder is not None else None
        if bscore[variant] is not None and bscore[variant].vector.size != model.latent_size:  # type: ignore[union-attr]
            raise NodeError(ErrorCode.CONFIG_ERROR, f"nsm.{bscore_key} does not match the latent size")
    return ShapeModels(nsm=nsm, bscore=bscore, device=device)


def mean_shape(model: NsmModel, resolution: int) -> np.ndarray:
    """Vertices (model units) of the zero-latent femur, cached on the model."""
    key = ("mean_shape", resolution)
    if key not in model.cache:
        z = np.zeros(model.latent_size, dtype=np.float32)
        device = next(model.decoder.parameters()).device
        model.cache[key] = latent_surfaces(model.decoder, z, resolution, device)[0][0]
    return model.cache[key]


def mirror_matrix(knee: KneeSurfaces) -> np.ndarray:
    """4x4 patient LPS -> fitting frame (reflection in x about the femur centroid if left)."""
    m = np.eye(4)
    if knee.mirrored:
        m[0, 0] = -1.0
        m[0, 3] = 2.0 * knee.mirror_centre_x
    return m


def register(knee: KneeSurfaces, model: NsmModel, settings: NsmSettings) -> Similarity:
    """Patient LPS -> model frame: mirror, similarity ICP onto the mean shape, normalisation."""
    mirror = Similarity(mirror_matrix(knee))
    bone = mirror.apply(knee.bone.vertices)
    icp = similarity_icp(bone, mean_shape(model, settings.mean_shape_resolution),
                         iterations=settings.icp_iterations, landmarks=settings.icp_landmarks,
                         seed=settings.seed)
    renorm = normalising_similarity(icp.apply(bone))
    total = mirror.then(icp).then(renorm)
    return Similarity(total.matrix, icp.rms * renorm.scale, icp.iterations)


def fit_targets(knee: KneeSurfaces, n_objects: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per surface: its vertices (patient mm) and SDF targets in mm (0 on its own surface)."""
    bone = knee.bone.vertices
    if n_objects == 1:
        return [bone], [np.zeros((len(bone), 1))]
    if knee.cartilage is None:
        raise ValueError("cartilage surface required for a two-object model")
    cart = knee.cartilage.vertices
    t_bone = np.stack([np.zeros(len(bone)), signed_distance(knee.cartilage, bone)], axis=1)
    t_cart = np.stack([signed_distance(knee.bone, cart, cKDTree(bone)), np.zeros(len(cart))], axis=1)
    return [bone, cart], [t_bone, t_cart]


def fit_variant(knee: KneeSurfaces, model: NsmModel, bscore: BScoreModel | None,
                settings: NsmSettings, *, return_meshes: bool = False) -> dict[str, Any]:
    """One NSM fit of a prepared knee; the per-variant results."""
    t0 = time.perf_counter()
    reg = register(knee, model, settings)
    scale = reg.scale  # model units per mm
    device = next(model.decoder.parameters()).device
    pts_mm, tgt_mm = fit_targets(knee, model.n_objects)
    surfaces = [torch.as_tensor(reg.apply(p), dtype=torch.float32).to(device) for p in pts_mm]
    targets = [torch.as_tensor(t * scale, dtype=torch.float32).to(device) for t in tgt_mm]
    opts = FitOptions(iterations=settings.iterations, points=settings.points,
                      patience=settings.patience, seed=settings.seed,
                      implementation=settings.implementation)
    fit = fit_latent(model.decoder, surfaces, targets, opts)
    meshes = latent_surfaces(model.decoder, fit.latent, settings.recon_resolution, device)
    back = reg.inverse()
    recon = [(back.apply(v), f) for v, f in meshes]
    out: dict[str, Any] = {
        "latent": [float(v) for v in fit.latent],
        "transform": reg.matrix.tolist(),
        "scale_mm": float(1.0 / scale),
        "icp_rms_mm": float(reg.rms / scale) if reg.rms else None,
        "assd_bone_mm": assd(recon[0][0], knee.bone.vertices),
        "assd_cart_mm": assd(recon[1][0], knee.cartilage.vertices) if model.n_objects == 2 and knee.cartilage is not None else None,
        "bscore": bscore.score(fit.latent) if bscore is not None else None,
        "loss": fit.loss, "iterations": fit.iterations, "best_iteration": fit.best_iteration,
        "fit_seconds": fit.seconds, "seconds": time.perf_counter() - t0,
        "model": model.describe(), "bscore_model": bscore.describe() if bscore else None,
    }
    if return_meshes:
        out["meshes"] = {"bone": recon[0], **({"cartilage": recon[1]} if len(recon) > 1 else {})}
    return out


def shape_stage(labels: np.ndarray, spacing: tuple[float, float, float],
                direction: tuple[float, ...], origin: tuple[float, float, float], *,
                models: ShapeModels, settings: NsmSettings, side: str | None = None,
                return_meshes: bool = False) -> dict[str, Any]:
    """NSM fit(s) + BScore of a canonical label map ``[k, j, i]`` (SimpleITK geometry).

    Returns flat keys for the primary fit (bone_and_cart when run, else bone_only):
    ``nsm_latent``, ``nsm_transform`` (4x4 patient LPS -> model frame, mirror included),
    ``nsm_assd_bone_mm``, ``nsm_assd_cart_mm``, ``bscore``, ``nsm_model``, ``nsm_bscore_model``,
    ``nsm_iterations``, ``nsm_loss``, ``nsm_seconds``; plus ``nsm_type``, ``knee_side``,
    ``nsm_mirrored``, ``nsm_clip_z_mm`` and ``nsm_fits`` (every variant's full record). Raises
    NodeError(NSM_FAILED) when the femur cannot be prepared or fitted.
    """
    geom = Geometry(spacing=tuple(spacing), origin=tuple(origin), direction=tuple(direction))  # type: ignore[arg-type]
    order = variants_for(settings.type)
    try:
        knee = prepare_surfaces(np.asarray(labels), geom, with_cartilage="bone_and_cart" in order,
                                side=side)
        fits = {v: fit_variant(knee, models.nsm[v], models.bscore.get(v), settings,
                               return_meshes=return_meshes) for v in order}
    except (ValueError, RuntimeError) as exc:
        raise NodeError(ErrorCode.NSM_FAILED, f"NSM fit failed: {exc}") from exc
    p = fits[order[0]]
    return {
        "nsm_type": settings.type, "knee_side": knee.side, "nsm_mirrored": knee.mirrored,
        "nsm_clip_z_mm": knee.clip_z_mm,
        "nsm_latent": p["latent"], "nsm_transform": p["transform"],
        "nsm_assd_bone_mm": p["assd_bone_mm"], "nsm_assd_cart_mm": p["assd_cart_mm"],
        "bscore": p["bscore"], "nsm_model": p["model"], "nsm_bscore_model": p["bscore_model"],
        "nsm_iterations": p["iterations"], "nsm_loss": p["loss"], "nsm_seconds": p["seconds"],
        "nsm_fits": fits,
    }


def write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Binary little-endian PLY (vertices float32 LPS mm, triangles int32), atomic."""
    import os
    import tempfile

    header = (f"ply\nformat binary_little_endian 1.0\ncomment kneenode NSM reconstruction, LPS mm\n"
              f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
              f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    tri = np.empty(len(faces), dtype=[("n", "u1"), ("i", "<i4", (3,))])
    tri["n"] = 3
    tri["i"] = faces
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(np.asarray(vertices, dtype="<f4").tobytes())
        fh.write(tri.tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def shape_to_folder(labels: np.ndarray, spacing: tuple[float, float, float],
                    direction: tuple[float, ...], origin: tuple[float, float, float],
                    out_dir: Path, *, models: ShapeModels, settings: NsmSettings,
                    side: str | None = None) -> dict[str, Any]:
    """Run :func:`shape_stage` and write ``shape.json`` (+ ``nsm_<variant>_<object>.ply``)."""
    from pipeline.segment.stage import write_json_atomic

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    res = shape_stage(labels, spacing, direction, origin, models=models, settings=settings,
                      side=side, return_meshes=settings.save_meshes)
    for variant, rec in res["nsm_fits"].items():
        for obj, (v, f) in rec.pop("meshes", {}).items():
            write_ply(out_dir / f"nsm_{variant}_{obj}.ply", v, f)
    write_json_atomic(res, out_dir / RESULTS_FILE)
    return res

"""Load an NSM model folder (public ShapeMedKnee layout) and a BScore folder.

Model folder::

    <folder>/model_params_config.json   (or model_config.json) - the training config
    <folder>/model/<epoch>.pth           - {"epoch", "model": state_dict, "optimizer"}

The state dict is loaded with ``strict=True`` into :class:`~pipeline.shape.decoder.TriplanarDecoder`
(the released ``vae_decoder.layers.*`` duplicates are checked and dropped). ``torch.load`` runs
with ``weights_only=True``: only tensors and plain containers are accepted from a file.

BScore folder: ``model.json`` with ``bscore_vector`` (unit vector, latent-sized), ``mean_healthy``
and ``std_healthy`` (the public layout), optionally ``name``/``version``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kneenode.errors import ErrorCode, NodeError
from pipeline.shape.decoder import DecoderConfig, TriplanarDecoder

CONFIG_NAMES = ("model_params_config.json", "model_config.json")


@dataclass
class NsmModel:
    """A loaded decoder with its identity and fitting defaults from the training config."""

    decoder: TriplanarDecoder
    config: dict[str, Any]
    folder: Path
    epoch: int
    name: str
    version: str
    demo: bool
    cache: dict[Any, Any] = field(default_factory=dict)  # mean shape per resolution

    @property
    def n_objects(self) -> int:
        """1 = bone only, 2 = bone + cartilage."""
        return self.decoder.cfg.n_objects

    @property
    def latent_size(self) -> int:
        return self.decoder.cfg.latent_size

    def describe(self) -> dict[str, Any]:
        """Identity written into results.json (``nsm_model``)."""
        return {"name": self.name, "version": self.version, "epoch": self.epoch,
                "folder": self.folder.name, "latent_size": self.latent_size,
                "objects": self.n_objects, "demo": self.demo}


def _fail(msg: str) -> NodeError:
    return NodeError(ErrorCode.CONFIG_ERROR, msg)


def read_config(folder: Path) -> dict[str, Any]:
    """The training config of a model folder."""
    for name in CONFIG_NAMES:
        path = folder / name
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise _fail(f"{path}: invalid JSON ({exc})") from exc
    raise _fail(f"NSM model folder {folder} has none of {', '.join(CONFIG_NAMES)}")


def pick_checkpoint(folder: Path, epoch: int | None = None) -> tuple[Path, int]:
    """``model/<epoch>.pth``: the given epoch, else the highest one present."""
    found = {}
    for p in (folder / "model").glob("*.pth"):
        m = re.fullmatch(r"(\d+)\.pth", p.name)
        if m:
            found[int(m.group(1))] = p
    if not found:
        raise _fail(f"NSM model folder {folder} has no model/<epoch>.pth")
    if epoch is None:
        epoch = max(found)
    if epoch not in found:
        raise _fail(f"NSM model folder {folder} has no model/{epoch}.pth (have {sorted(found)})")
    return found[epoch], epoch


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint (``model`` / ``state_dict`` key, or the dict itself)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise _fail(f"cannot read NSM checkpoint {path}: {exc}") from exc
    if isinstance(blob, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in blob and isinstance(blob[key], dict):
                return blob[key]
        return blob
    raise _fail(f"NSM checkpoint {path} holds no state dict")


def load_model(folder: Path | str, *, device: str = "cpu", epoch: int | None = None) -> NsmModel:
    """Load a model folder onto ``device`` (strict key matching) in eval mode."""
    folder = Path(folder)
    if not folder.is_dir():
        raise _fail(f"NSM model folder {folder} does not exist")
    cfg = read_config(folder)
    try:
        dcfg = DecoderConfig.from_training_config(cfg)
    except ValueError as exc:
        raise _fail(f"{folder}: {exc}") from exc
    decoder = TriplanarDecoder(dcfg)
    path, ep = pick_checkpoint(folder, epoch)
    state = load_state_dict(path)
    try:
        decoder.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise _fail(f"{path} does not match the config of {folder}: {exc}") from exc
    decoder.to(device).eval()
    for p in decoder.parameters():
        p.requires_grad_(False)
    return NsmModel(decoder=decoder, config=cfg, folder=folder, epoch=ep,
                    name=str(cfg.get("EXP_NAME") or folder.name),
                    version=str(cfg.get("version", f"epoch-{ep}")), demo=bool(cfg.get("demo", False)))


@dataclass(frozen=True)
class BScoreModel:
    """``BScore = (latent . vector - mean_healthy) / std_healthy``."""

    vector: np.ndarray
    mean_healthy: float
    std_healthy: float
    name: str
    version: str
    demo: bool

    def score(self, latent: np.ndarray | list[float]) -> float:
        """BScore of one latent (0 = average healthy knee, > 2 "not healthy")."""
        z = np.asarray(latent, dtype=np.float64).reshape(-1)
        if z.shape != self.vector.shape:
            raise NodeError(ErrorCode.CONFIG_ERROR,
                            f"BScore vector has {self.vector.size} values, latent {z.size}")
        return float((z @ self.vector - self.mean_healthy) / self.std_healthy)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "mean_healthy": self.mean_healthy,
                "std_healthy": self.std_healthy, "demo": self.demo}


def load_bscore(folder: Path | str) -> BScoreModel:
    """Read a BScore folder (``model.json``); the vector is re-normalised to unit length."""
    folder = Path(folder)
    path = folder / "model.json" if folder.is_dir() else folder
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        v = np.asarray(data["bscore_vector"], dtype=np.float64).reshape(-1)
        mean, std = float(data["mean_healthy"]), float(data["std_healthy"])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise _fail(f"invalid BScore folder {folder}: {exc}") from exc
    norm = float(np.linalg.norm(v))
    if not (np.isfinite(norm) and norm > 0.0 and np.isfinite(mean) and np.isfinite(std) and std > 0.0):
        raise _fail(f"BScore folder {folder}: zero/non-finite vector or constants, or std_healthy <= 0")
    return BScoreModel(vector=v / norm, mean_healthy=mean, std_healthy=std,
                       name=str(data.get("name", folder.name)), version=str(data.get("version", "")),
                       demo=bool(data.get("demo", False)))

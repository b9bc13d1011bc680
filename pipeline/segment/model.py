"""Load an nnU-Net v2 trained-model folder once per process and keep it warm.

Why not ``nnUNetPredictor.initialize_from_trained_model_folder``: it finds the trainer class with
``recursive_find_trainer_class_by_name``, which imports every trainer module until it finds the
name, including ``primus_trainers`` (imports timm, deliberately not installed here), and it
unpickles checkpoints with ``weights_only=False``. We build the network the way the default
``nnUNetTrainer.build_network_architecture`` does: ``get_network_from_plans`` with the
configuration's architecture and ``determine_num_input_channels``, without deep supervision. The
strict ``load_state_dict`` then proves that the architecture matches the checkpoint; a trainer that
changes the architecture in code fails there with CONFIG_ERROR instead of predicting garbage.
Plans, configuration inheritance, preprocessing, resampling and label handling stay nnU-Net's own
(PlansManager / ConfigurationManager / LabelManager).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.label_handling.label_handling import (
    LabelManager,
    determine_num_input_channels,
)
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from kneenode.errors import ErrorCode, NodeError
from kneenode.logs import get_logger
from kneenode.settings import SegmentSettings
from kneenode.warm import WarmCache
from pipeline.segment import folder as mf
from pipeline.segment.labels import lookup_table, native_to_canonical

log = get_logger(__name__)

#: Architecture modules we can build (others may import timm or need trainer code).
_ALLOWED_ARCH_PREFIX = "dynamic_network_architectures.architectures.unet."


@dataclass(frozen=True)
class ModelCard:
    """Who the model is: written into every result so a phantom demo is never taken as clinical."""

    name: str
    version: str
    description: str
    is_demo: bool
    dataset: str
    trainer: str
    plans: str
    configuration: str
    folds: tuple[str, ...]
    checkpoint: str
    checkpoint_sha256: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The identification stored in results.json and read by the DICOM encoders."""
        return {
            "algorithm_name": self.name,
            "algorithm_version": self.version,
            "description": self.description,
            "is_demo": self.is_demo,
            "dataset": self.dataset,
            "trainer": self.trainer,
            "plans": self.plans,
            "configuration": self.configuration,
            "folds": list(self.folds),
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": list(self.checkpoint_sha256),
            **self.extra,
        }


@dataclass
class LoadedModel:
    """One configuration of a trained model, ready to predict (and its cascade parent)."""

    folder: Path
    plans_manager: PlansManager
    configuration_manager: ConfigurationManager
    configuration: str
    dataset_json: dict[str, Any]
    label_manager: LabelManager
    networks: list[torch.nn.Module]
    mirror_axes: tuple[int, ...] | None
    device: torch.device
    settings: SegmentSettings
    card: ModelCard
    lut: np.ndarray
    previous: LoadedModel | None = None

    @property
    def patch_size(self) -> tuple[int, ...]:
        """Sliding-window tile size (plans)."""
        return tuple(int(p) for p in self.configuration_manager.patch_size)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an unavailable cuda is a CONFIG_ERROR."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise NodeError(ErrorCode.CONFIG_ERROR, f"segment.device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NodeError(ErrorCode.CONFIG_ERROR, f"segment.device is {name!r} but no CUDA device")
    return device


def build_network(
    plans_manager: PlansManager,
    configuration_manager: ConfigurationManager,
    dataset_json: dict[str, Any],
) -> torch.nn.Module:
    """The configuration's network, built like nnUNetTrainer does, without deep supervision."""
    arch = configuration_manager.network_arch_class_name
    if not arch.startswith(_ALLOWED_ARCH_PREFIX):
        raise NodeError(
            ErrorCode.CONFIG_ERROR,
            f"network class {arch} is not supported (only {_ALLOWED_ARCH_PREFIX}* U-Nets)",
        )
    num_in = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    num_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    return get_network_from_plans(
        arch,
        configuration_manager.network_arch_init_kwargs,
        configuration_manager.network_arch_init_kwargs_req_import,
        num_in,
        num_out,
        allow_init=False,
        deep_supervision=False,
    )


def _read_card(folder: Path, base: dict[str, Any]) -> ModelCard:
    path = folder / mf.MODEL_CARD
    card: dict[str, Any] = mf.read_json(path) if path.is_file() else {}
    known = {"algorithm_name", "algorithm_version", "description", "is_demo"}
    return ModelCard(
        name=str(card.get("algorithm_name", f"nnU-Net v2 {base['dataset']}")),
        version=str(card.get("algorithm_version", f"{base['plans']}/{base['configuration']}")),
        description=str(card.get("description", "nnU-Net v2 trained-model folder")),
        is_demo=bool(card.get("is_demo", False)),
        extra={k: v for k, v in card.items() if k not in known},
        **base,
    )


def _load_config(
    folder: Path, configuration: str, settings: SegmentSettings, device: torch.device
) -> LoadedModel:
    dataset = mf.read_json(folder / "dataset.json")
    plans = mf.read_json(folder / "plans.json")
    plans_manager = PlansManager(plans)
    if configuration not in plans_manager.available_configurations:
        raise NodeError(
            ErrorCode.CONFIG_ERROR,
            f"configuration {configuration!r} not in {folder}/plans.json "
            f"(has {plans_manager.available_configurations})",
        )
    configuration_manager = plans_manager.get_configuration(configuration)
    lut = lookup_table(native_to_canonical(dataset.get("labels", {})))
    folds = list(settings.folds) or mf.available_folds(folder, settings.checkpoint)
    if not folds:
        raise NodeError(ErrorCode.CONFIG_ERROR, f"no fold_N/{settings.checkpoint} in {folder}")
    networks, digests, mirror_axes, trainer = [], [], None, "nnUNetTrainer"
    for i, fold in enumerate(folds):
        path = folder / f"fold_{fold}" / settings.checkpoint
        checkpoint, digest = mf.load_checkpoint(path, allow_pickle=settings.allow_pickle)
        if i == 0:
            trainer = str(checkpoint.get("trainer_name", trainer))
            axes = checkpoint.get("inference_allowed_mirroring_axes")
            mirror_axes = tuple(int(a) for a in axes) if axes is not None else None
            saved = checkpoint.get("init_args", {}).get("configuration", configuration)
            if saved != configuration:
                raise NodeError(
                    ErrorCode.CONFIG_ERROR,
                    f"{path} was trained as {saved!r}, not {configuration!r}",
                )
        network = build_network(plans_manager, configuration_manager, dataset)
        try:
            network.load_state_dict(checkpoint["network_weights"], strict=True)
        except RuntimeError as exc:
            raise NodeError(
                ErrorCode.CONFIG_ERROR,
                f"{path} does not fit the plans' architecture (custom trainer {trainer}?): "
                f"{str(exc).splitlines()[0]}",
            ) from None
        networks.append(network.to(device).eval())
        digests.append(digest)
    base = {
        "dataset": str(plans.get("dataset_name", folder.parent.name)),
        "trainer": trainer,
        "plans": str(plans.get("plans_name", "")),
        "configuration": configuration,
        "folds": tuple(folds),
        "checkpoint": settings.checkpoint,
        "checkpoint_sha256": tuple(digests),
    }
    return LoadedModel(
        folder=folder,
        plans_manager=plans_manager,
        configuration_manager=configuration_manager,
        configuration=configuration,
        dataset_json=dataset,
        label_manager=plans_manager.get_label_manager(dataset),
        networks=networks,
        mirror_axes=mirror_axes,
        device=device,
        settings=settings,
        card=_read_card(folder, base),
        lut=lut,
    )


def _load(settings: SegmentSettings) -> LoadedModel:
    device = resolve_device(settings.device)
    configuration = settings.resolved_configuration
    folder = mf.trained_model_dir(settings.model_dir, settings.trainer, settings.plans, configuration)
    model = _load_config(folder, configuration, settings, device)
    previous = model.configuration_manager.previous_stage_name
    if previous is not None:
        low_dir = (
            Path(settings.lowres_model_dir)
            if settings.lowres_model_dir
            else mf.sibling_dir(folder, previous)
        )
        low_dir = mf.trained_model_dir(low_dir, settings.trainer, settings.plans, previous)
        model.previous = _load_config(low_dir, previous, settings, device)
    return model


_CACHE: WarmCache[LoadedModel] = WarmCache("segmentation")
#: Segment settings that only change how a loaded model predicts, not what is loaded.
PREDICT_KEYS = ("tta", "tile_step_size", "tile_batch_size", "cpu_threads", "mixed_precision",
                "postprocess")


def cache_key(settings: SegmentSettings) -> str:
    """What identifies a loaded model: folder, configuration, folds, checkpoint, device ...

    Settings that only change prediction (TTA, tiling, threads, post-processing) are left out,
    so profiles that differ only there share one warm model.
    """
    data = settings.model_dump(mode="json", exclude=set(PREDICT_KEYS))
    data["configuration"] = settings.resolved_configuration  # "auto" and its value: one model
    return json.dumps(data, sort_keys=True)


def with_settings(model: LoadedModel, settings: SegmentSettings) -> LoadedModel:
    """The warm model predicting with ``settings`` (a shallow copy; weights are shared)."""
    previous = with_settings(model.previous, settings) if model.previous is not None else None
    return replace(model, settings=settings, previous=previous)


def load_model(settings: SegmentSettings) -> LoadedModel:
    """The model for these settings, loaded on first use and then kept warm in this process.

    At most ``jobs.warm_models`` models stay loaded (least recently used dropped first, and on a
    GPU until ``jobs.gpu_headroom_mb`` are free; :mod:`kneenode.warm`).

    Raises
    ------
    NodeError
        CONFIG_ERROR for a missing or malformed folder, unmappable labels, a refused checkpoint
        or an architecture mismatch.
    """

    def load() -> LoadedModel:
        model = _load(settings)
        log.info(
            "segmentation model loaded",
            folder=str(model.folder),
            configuration=model.configuration,
            folds=list(model.card.folds),
            device=str(model.device),
            algorithm=model.card.name,
            version=model.card.version,
        )
        return model

    device = str(resolve_device(settings.device))
    return with_settings(_CACHE.get(cache_key(settings), load, device), settings)


def unload_all() -> None:
    """Forget every cached model (tests; a worker changing its settings)."""
    _CACHE.clear()

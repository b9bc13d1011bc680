"""nnU-Net v2 trained-model folders: locate, read and write them in nnU-Net's exact format.

A trained-model folder is ``<results>/DatasetXXX_Name/<trainer>__<plans>__<configuration>/`` with
``dataset.json``, ``plans.json`` and ``fold_N/checkpoint_{final,best}.pth``. A checkpoint is the
dict nnU-Net's trainer saves: ``network_weights``, ``init_args`` (plans, configuration, fold,
dataset_json, device), ``trainer_name``, ``inference_allowed_mirroring_axes`` and training state.
Writing (for tests and the demo model) produces exactly that layout, so the folder also loads in
stock nnU-Net.

Checkpoints are read with ``torch.load(weights_only=True)`` and a narrow allow-list of the numpy
scalar types nnU-Net's training log stores; anything else needs ``segment.allow_pickle``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kneenode.errors import ErrorCode, NodeError
from kneenode.fsio import write_bytes_atomic

MODEL_CARD = "kneenode_model.json"


def _config_error(message: str) -> NodeError:
    return NodeError(ErrorCode.CONFIG_ERROR, message)


def trained_model_dir(model_dir: Path, trainer: str, plans: str, configuration: str) -> Path:
    """The trained-model folder: ``model_dir`` itself, or its ``trainer__plans__configuration``."""
    model_dir = Path(model_dir)
    if (model_dir / "plans.json").is_file():
        return model_dir
    candidate = model_dir / f"{trainer}__{plans}__{configuration}"
    if (candidate / "plans.json").is_file():
        return candidate
    raise _config_error(
        f"no nnU-Net trained-model folder at {model_dir} (no plans.json there or in "
        f"{candidate.name}/)"
    )


def sibling_dir(folder: Path, configuration: str) -> Path:
    """The folder of another configuration of the same trainer and plans (cascade stages)."""
    parts = folder.name.split("__")
    if len(parts) != 3:
        raise _config_error(
            f"cannot derive the {configuration} folder from {folder.name!r} "
            "(expected <trainer>__<plans>__<configuration>); set segment.lowres_model_dir"
        )
    return folder.parent / f"{parts[0]}__{parts[1]}__{configuration}"


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON file of a model folder; a missing or broken file is a CONFIG_ERROR."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _config_error(f"model file missing: {path}") from None
    except (OSError, ValueError) as exc:
        raise _config_error(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise _config_error(f"{path} does not hold a JSON object")
    return data


def available_folds(folder: Path, checkpoint: str) -> list[str]:
    """Fold names (``"0"``, ``"1"``, ..., ``"all"``) whose folder holds ``checkpoint``."""
    found = []
    for sub in sorted(Path(folder).glob("fold_*")):
        if (sub / checkpoint).is_file():
            found.append(sub.name[len("fold_") :])
    numeric = sorted(f for f in found if f.isdigit())
    # nnU-Net's auto-detection ignores fold_all when numbered folds exist; so do we.
    return [str(f) for f in sorted(int(f) for f in numeric)] or [f for f in found if f == "all"]


def _safe_globals() -> list[Any]:
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    types: list[Any] = [core.multiarray.scalar, np.dtype]
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        dtype_cls = getattr(np.dtypes, name, None)
        if dtype_cls is not None:
            types.append(dtype_cls)
    return types


def load_checkpoint(path: Path, *, allow_pickle: bool = False) -> tuple[dict[str, Any], str]:
    """Load a checkpoint on the CPU; return it and the sha256 of its bytes.

    ``weights_only=True`` first (tensors, containers, numpy scalars); when that refuses the file,
    ``allow_pickle`` decides between a CONFIG_ERROR and a full unpickle (trusted folders only).
    """
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise _config_error(f"checkpoint missing: {path}") from None
    digest = hashlib.sha256(raw).hexdigest()
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            checkpoint = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for refused pickles
        if not allow_pickle:
            first = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else repr(exc)
            raise _config_error(
                f"checkpoint {path} cannot be loaded weights-only ({first}); if you trust this "
                "model folder set segment.allow_pickle = true"
            ) from None
        checkpoint = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=False)
    if not isinstance(checkpoint, dict) or "network_weights" not in checkpoint:
        raise _config_error(f"{path} is not an nnU-Net v2 checkpoint (no network_weights)")
    return checkpoint, digest


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON atomically (temp + fsync + rename), indented like nnU-Net's own files."""
    write_bytes_atomic(Path(path), (json.dumps(data, indent=4, sort_keys=False) + "\n").encode())


def resenc_plans(
    *,
    dataset_name: str,
    plans_name: str,
    patch_size: Sequence[int],
    spacing: Sequence[float],
    features: Sequence[int],
    blocks: Sequence[int],
    strides: Sequence[Sequence[int]] | None = None,
    intensity: Mapping[str, float] | None = None,
    extra_configurations: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A plans.json dict for a 3-D ``ResidualEncoderUNet`` configuration ``3d_fullres``.

    Same keys and values as nnU-Net's ResEnc planners write; widths, blocks, patch and spacing
    are parameters so tests and the demo model can be tiny.
    """
    n = len(features)
    if strides is None:
        strides = [[1, 1, 1]] + [[2, 2, 2]] * (n - 1)
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
        "arch_kwargs": {
            "n_stages": n,
            "features_per_stage": list(features),
            "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * n,
            "strides": [list(s) for s in strides],
            "n_blocks_per_stage": list(blocks),
            "n_conv_per_stage_decoder": [1] * (n - 1),
            "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-05, "affine": True},
            "dropout_op": None,
            "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU",
            "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    resampling = "resample_data_or_seg_to_shape"
    fullres = {
        "data_identifier": f"{plans_name}_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2,
        "patch_size": list(patch_size),
        "median_image_size_in_voxels": list(patch_size),
        "spacing": list(spacing),
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": resampling,
        "resampling_fn_seg": resampling,
        "resampling_fn_data_kwargs": {
            "is_seg": False,
            "order": 3,
            "order_z": 0,
            "force_separate_z": None,
        },
        "resampling_fn_seg_kwargs": {
            "is_seg": True,
            "order": 1,
            "order_z": 0,
            "force_separate_z": None,
        },
        "resampling_fn_probabilities": resampling,
        "resampling_fn_probabilities_kwargs": {
            "is_seg": False,
            "order": 1,
            "order_z": 0,
            "force_separate_z": None,
        },
        "architecture": arch,
        "batch_dice": False,
    }
    stats = {
        "max": 1.0,
        "mean": 0.5,
        "median": 0.5,
        "min": 0.0,
        "percentile_00_5": 0.0,
        "percentile_99_5": 1.0,
        "std": 0.25,
    }
    stats.update(intensity or {})
    configurations: dict[str, Any] = {"3d_fullres": fullres}
    configurations.update({k: dict(v) for k, v in (extra_configurations or {}).items()})
    return {
        "dataset_name": dataset_name,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": list(spacing),
        "original_median_shape_after_transp": list(patch_size),
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2],
        "transpose_backward": [0, 1, 2],
        "configurations": configurations,
        "experiment_planner_used": "nnUNetPlannerResEncM",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": stats},
    }


def dataset_json(name: str, labels: Mapping[str, int], *, num_training: int = 0) -> dict[str, Any]:
    """A dataset.json dict as nnU-Net v2 expects it (one MRI channel, NIfTI files)."""
    return {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, **dict(labels)},
        "numTraining": num_training,
        "file_ending": ".nii.gz",
        "name": name,
    }


def portable_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies of a state dict that keep its aliases shared.

    dynamic_network_architectures registers every convolution twice (``conv`` and
    ``all_modules.0``, norms too); one copy per alias stores every weight several times (the demo
    cascade's lower stage: 25.5 MB instead of 7.2 MB). ``torch.save`` of the returned dict stores
    each tensor once, as nnU-Net's trainer does when it saves the live state dict.
    """
    copies: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], torch.Tensor] = {}
    out = {}
    for name, value in state.items():
        key = (value.untyped_storage().data_ptr(), int(value.storage_offset()), tuple(value.shape),
               tuple(value.stride()))
        if key not in copies:
            copies[key] = value.detach().cpu().clone()
        out[name] = copies[key]
    return out


def write_trained_model(
    folder: Path,
    *,
    plans: Mapping[str, Any],
    dataset: Mapping[str, Any],
    configuration: str,
    weights: Mapping[str, Mapping[str, torch.Tensor]],
    checkpoint_name: str = "checkpoint_final.pth",
    trainer_name: str = "nnUNetTrainer",
    mirror_axes: tuple[int, ...] | None = (0, 1, 2),
    epochs: int = 0,
    logging: Mapping[str, Any] | None = None,
) -> Path:
    """Write a trained-model folder in nnU-Net v2's format; ``weights`` maps fold -> state dict."""
    folder = Path(folder)
    write_json(folder / "dataset.json", dataset)
    write_json(folder / "plans.json", plans)
    for fold, state in weights.items():
        checkpoint = {
            "network_weights": portable_weights(state),
            "optimizer_state": {},
            "grad_scaler_state": None,
            "logging": dict(logging or {}),
            "_best_ema": None,
            "current_epoch": epochs,
            "init_args": {
                "plans": dict(plans),
                "configuration": configuration,
                "fold": int(fold) if str(fold).isdigit() else str(fold),
                "dataset_json": dict(dataset),
                "device": torch.device("cuda"),
            },
            "trainer_name": trainer_name,
            "inference_allowed_mirroring_axes": mirror_axes,
        }
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        write_bytes_atomic(folder / f"fold_{fold}" / checkpoint_name, buf.getvalue())
    return folder

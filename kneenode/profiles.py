"""Processing profiles beyond the settings tree: ``--set`` overrides, model checks, model cards.

``[profiles.<name>]`` is parsed and merged by :meth:`kneenode.settings.Settings.for_profile`. Here:
turning ``--set key=value`` into a profile-shaped (and, for analyze, a node-wide) override,
checking at startup that every model folder a profile names exists (CONFIG_ERROR naming the
profile and the key, before anything starts), and the fingerprint of those folders (model card + checksums) a job stores in its
snapshot. Path checks only: no torch import, so the edge process stays light.
"""

from __future__ import annotations

import hashlib
import json
import threading
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import (
    DEFAULT_PROFILE,
    PROFILE_JOB_KEYS,
    PROFILE_SECTIONS,
    SegmentSettings,
    Settings,
    configuration_in_name,
)

#: The old web app's per-upload options and the profile keys that replace them (docs/profiles.md).
OLD_OPTIONS: dict[str, dict[str, Any]] = {
    "segmentation model nnunet_fullres": {"segment": {"configuration": "3d_fullres"}},
    "segmentation model nnunet_cascade": {"segment": {"configuration": "3d_cascade_fullres"}},
    "NSM off": {"nsm": {"enabled": False}},
    "NSM type bone_and_cart": {"nsm": {"enabled": True, "type": "bone_and_cart"}},
    "NSM type bone_only": {"nsm": {"enabled": True, "type": "bone_only"}},
    "NSM type both": {"nsm": {"enabled": True, "type": "both"}},
}

def option_text(keys: dict[str, Any]) -> str:
    """``{"nsm": {"enabled": True}}`` -> ``nsm.enabled = true`` (TOML values, comma-separated)."""
    parts = []
    for section, values in keys.items():
        for key, value in values.items():
            shown = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
            parts.append(f"{section}.{key} = {shown}")
    return ", ".join(parts)


_NSM_FOLDERS = {"bone_and_cart": ("bone_cart_model", "bone_cart_bscore"),
                "bone_only": ("bone_only_model", "bone_only_bscore")}


def _parse_item(item: str) -> tuple[list[str], Any]:
    """``"segment.tta=true"`` -> (``["segment", "tta"]``, ``True``): TOML literal, else string."""
    key, sep, raw = item.partition("=")
    parts = key.strip().split(".")
    if not sep or any(not p.strip() for p in parts):
        raise ValueError(f"--set {item!r}: expected KEY=VALUE (e.g. segment.tta=true)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return [p.strip() for p in parts], value


def _put(out: dict[str, Any], parts: list[str], value: Any) -> None:
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"--set {'.'.join(parts)}: {part} is given a value and sub-keys")  # noqa: TRY004
    node[parts[-1]] = value


def _profile_parts(parts: list[str]) -> list[str] | None:
    """The key as a profile key (``jobs.`` dropped from the stage options), None if not one."""
    if parts[0] == "jobs" and len(parts) > 1 and parts[1] in PROFILE_JOB_KEYS:
        parts = parts[1:]
    return parts if parts[0] in (*PROFILE_SECTIONS, *PROFILE_JOB_KEYS) else None


def split_sets(items: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` items as (node-wide overrides, a profile-shaped override).

    Profile keys (:data:`PROFILE_SECTIONS`, the stage options with or without ``jobs.``) win over
    the job's profile; every other key (``jobs.selection.*``, ``reader.*`` ...) belongs to the
    node-wide settings, before routing (``kneenode analyze``). Values are TOML literals
    (``true``, ``3``, ``["shape"]``), else plain strings.

    Raises
    ------
    ValueError
        For an item without ``=``, an empty key part, or a key given a value and sub-keys.
    """
    node: dict[str, Any] = {}
    profile: dict[str, Any] = {}
    for item in items:
        parts, value = _parse_item(item)
        as_profile = _profile_parts(parts)
        if as_profile is None:
            _put(node, parts, value)
        else:
            _put(profile, as_profile, value)
    return node, profile


def parse_sets(items: Iterable[str]) -> dict[str, Any]:
    """``["segment.configuration=3d_cascade_fullres", ...]`` -> a profile-shaped override.

    Raises
    ------
    ValueError
        As :func:`split_sets`, and for a key that profiles do not override.
    """
    items = list(items)
    node, profile = split_sets(items)
    if node:
        key = next(".".join(p) for p, _ in map(_parse_item, items) if _profile_parts(p) is None)
        raise ValueError(f"--set {key}: profiles override "
                         f"{', '.join((*PROFILE_SECTIONS, *PROFILE_JOB_KEYS))}")
    return profile


def profile_names(settings: Settings) -> list[str]:
    """Every profile: ``default`` (the node-wide sections) and each ``[profiles.<name>]``."""
    return [DEFAULT_PROFILE, *settings.profiles]


def effective(settings: Settings, profile: str, sets: dict[str, Any] | None = None) -> Settings:
    """:meth:`Settings.for_profile` with its ValueError as CONFIG_ERROR (for commands and jobs)."""
    try:
        return settings.for_profile(profile, sets)
    except ValueError as exc:
        raise NodeError(ErrorCode.CONFIG_ERROR, str(exc),
                        hint=f"profiles: {', '.join(profile_names(settings))}") from None


# -- startup checks ---------------------------------------------------------------------------
def trained_model_folder(segment: SegmentSettings, configuration: str | None = None) -> Path | None:
    """The nnU-Net trained-model folder the settings name (None when it does not exist).

    The same rule as :func:`pipeline.segment.folder.trained_model_dir`: ``model_dir`` itself, or
    its ``<trainer>__<plans>__<configuration>`` subfolder.
    """
    config = configuration or segment.resolved_configuration
    for folder in (Path(segment.model_dir),
                   Path(segment.model_dir) / f"{segment.trainer}__{segment.plans}__{config}"):
        if (folder / "plans.json").is_file():
            return folder
    return None


def _segment_problems(segment: SegmentSettings) -> list[tuple[str, str]]:
    folder = trained_model_folder(segment)
    configuration = segment.resolved_configuration
    if folder is None:
        sub = f"{segment.trainer}__{segment.plans}__{configuration}"
        text = (f"{segment.model_dir}: no nnU-Net trained-model folder for "
                f"{configuration} (no plans.json there or in {sub}/)")
        return [("segment.model_dir", text)]
    problems = []
    try:
        plans = json.loads((folder / "plans.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return [("segment.model_dir", f"{folder}/plans.json cannot be read: {exc}")]
    configs = plans.get("configurations", {})
    stage = configuration_in_name(folder)
    if configuration not in configs:
        text = f"{configuration!r} is not in {folder}/plans.json (has {sorted(configs)})"
        problems.append(("segment.configuration", text))
    elif stage is not None and stage != configuration:
        text = f"{folder} holds the {stage} stage, not {configuration}"
        problems.append(("segment.configuration", text))
    elif configs[configuration].get("previous_stage"):
        low = configs[configuration]["previous_stage"]
        parts = folder.name.split("__")
        sibling = "__".join([*parts[:2], low]) if len(parts) == 3 else f"{folder.name}__{low}"
        low_dir = (Path(segment.lowres_model_dir) if segment.lowres_model_dir
                   else folder.parent / sibling)
        key = "segment.lowres_model_dir"
        if not (low_dir / "plans.json").is_file() and not (
                low_dir / f"{segment.trainer}__{segment.plans}__{low}" / "plans.json").is_file():
            problems.append((key, f"the cascade's {low} stage has no trained-model folder at {low_dir}"))
    if not _folds(folder, segment):
        problems.append(("segment.folds", f"no fold_<N>/{segment.checkpoint} in {folder}"))
    return problems


def _folds(folder: Path, segment: SegmentSettings) -> list[Path]:
    if segment.folds:
        return [folder / f"fold_{f}" / segment.checkpoint for f in segment.folds
                if (folder / f"fold_{f}" / segment.checkpoint).is_file()]
    return sorted(p for p in folder.glob(f"fold_*/{segment.checkpoint}") if p.is_file())


def _nsm_problems(settings: Settings) -> list[tuple[str, str]]:
    nsm = settings.nsm
    problems = []
    for variant in (["bone_and_cart", "bone_only"] if nsm.type == "both" else [nsm.type]):
        model_key, bscore_key = _NSM_FOLDERS[variant]
        folder = getattr(nsm, model_key)
        if folder is None:
            problems.append((f"nsm.{model_key}", f"unset, but nsm.type = {nsm.type} needs it"))
        elif not (Path(folder) / "model_params_config.json").is_file() or not any(
                (Path(folder) / "model").glob("*.pth")):
            text = f"{folder}: no NSM model folder (model_params_config.json + model/<epoch>.pth)"
            problems.append((f"nsm.{model_key}", text))
        bscore = getattr(nsm, bscore_key)
        if bscore is not None and not (Path(bscore) / "model.json").is_file():
            problems.append((f"nsm.{bscore_key}", f"{bscore}: no BScore folder (model.json)"))
    return problems


def check_models(settings: Settings, stages: Iterable[str]) -> None:
    """Fail fast when a profile names a model folder that is not there.

    Only the models of stages the chain declares are checked (``segment``; ``shape`` when the
    profile runs it), so a test chain without models needs none.

    Raises
    ------
    NodeError
        CONFIG_ERROR naming the profile and the key, with a hint.
    """
    names = set(stages)
    for name in profile_names(settings):
        eff = effective(settings, name)
        problems = _segment_problems(eff.segment) if "segment" in names else []
        if "shape" in names and "shape" in eff.jobs.optional_stages and eff.nsm.active():
            problems += _nsm_problems(eff)
        if problems:
            key, text = problems[0]
            where = f"[profiles.{name}]" if name != DEFAULT_PROFILE else "the node-wide settings"
            raise NodeError(ErrorCode.CONFIG_ERROR, f"profile '{name}': {key}: {text}",
                            hint=f"fix {key} in {where} (or remove it there to inherit it)")


# -- model fingerprints -----------------------------------------------------------------------
_DIGESTS: dict[tuple[str, int, int], str] = {}
_DIGEST_LOCK = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime): checkpoints are hashed once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _DIGEST_LOCK:
        if key in _DIGESTS:
            return _DIGESTS[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    with _DIGEST_LOCK:
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def _segment_card(segment: SegmentSettings) -> dict[str, Any]:
    folder = trained_model_folder(segment)
    if folder is None:
        return {"folder": str(segment.model_dir), "missing": True}
    card_path = folder / "kneenode_model.json"
    card = json.loads(card_path.read_text(encoding="utf-8")) if card_path.is_file() else {}
    return {
        "folder": str(folder.resolve()),
        "configuration": segment.resolved_configuration,
        "algorithm_name": card.get("algorithm_name", ""),
        "algorithm_version": card.get("algorithm_version", ""),
        "is_demo": bool(card.get("is_demo", False)),
        "checkpoint_sha256": {p.parent.name: file_sha256(p) for p in _folds(folder, segment)},
    }


def model_fingerprint(settings: Settings, stages: Iterable[str]) -> dict[str, Any]:
    """Model card and checksums of every model folder the effective settings use."""
    names = set(stages)
    out: dict[str, Any] = {}
    if "segment" in names:
        out["segment"] = _segment_card(settings.segment)
    if "shape" in names and settings.nsm.active():
        nsm: dict[str, Any] = {}
        for key in ("bone_cart_model", "bone_only_model", "bone_cart_bscore", "bone_only_bscore"):
            folder = getattr(settings.nsm, key)
            if folder is None or not Path(folder).is_dir():
                continue
            files = sorted(Path(folder).glob("model/*.pth")) + sorted(Path(folder).glob("model.json"))
            nsm[key] = {"folder": str(Path(folder).resolve()),
                        "sha256": {f.name: file_sha256(f) for f in files}}
        out["nsm"] = nsm
    return out

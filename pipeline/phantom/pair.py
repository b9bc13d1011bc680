"""Baseline and follow-up phantoms on disk: ``kneenode phantom --followup-of`` and a test helper.

A follow-up is rebuilt from the ``arguments`` its baseline's truth.json records (so any phantom
this version wrote can be followed up, whatever arguments made it) with a :class:`Followup`
applied. Losses and intervals are always relative to the baseline: the follow-up of a follow-up
is another visit of the same baseline knee.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian

from pipeline.phantom.build import Phantom, make_phantom
from pipeline.phantom.contrast import ImagingParams
from pipeline.phantom.followup import Followup
from pipeline.phantom.output import PhantomPaths, write_phantom

#: The loss of :func:`write_followup_pair` by default: 0.3 mm in the medial weight-bearing zone.
DEFAULT_LOSS_MM: dict[str, float] = {"med_wb_fem_cart": 0.3, "med_tib_cart": 0.3}


@dataclass(frozen=True)
class PhantomPair:
    """Where :func:`write_followup_pair` wrote the two exams, and the truth of the change."""

    baseline: PhantomPaths
    followup: PhantomPaths
    loss_mm: dict[str, float]  # every region, 0 where unchanged
    interval_days: int


def baseline_arguments(truth: Mapping[str, Any]) -> dict[str, Any]:
    """The :func:`make_phantom` keyword arguments of the knee a truth.json describes.

    Raises ValueError for a truth.json without ``arguments`` (written before follow-ups existed).
    """
    args = truth.get("arguments")
    if not args:
        raise ValueError("this truth.json records no phantom arguments (written by an older "
                         "kneenode): re-create the baseline phantom first")
    out = dict(args)
    for key in ("spacing", "shape", "rotation_deg"):
        if out.get(key) is not None:
            out[key] = tuple(out[key])
    if out.get("imaging") is not None:
        out["imaging"] = ImagingParams(**out["imaging"])
    return out


def followup_of(truth: Mapping[str, Any], *, loss_mm: Mapping[str, float],
                interval_days: int = 365, visit: int | None = None) -> Phantom:
    """The follow-up of the phantom ``truth`` describes (a baseline or an earlier follow-up).

    ``visit`` defaults to one more than the given phantom's.
    """
    previous = truth.get("followup")
    number = visit or ((int(previous["visit"]) + 1) if isinstance(previous, Mapping) else 1)
    spec = Followup(loss_mm=dict(loss_mm), interval_days=interval_days, visit=number)
    return make_phantom(**baseline_arguments(truth), followup=spec)


def read_truth(folder: str | Path) -> dict[str, Any]:
    """``folder/truth/truth.json`` of a written phantom (ValueError when there is none)."""
    path = Path(folder) / "truth" / "truth.json"
    if not path.is_file():
        raise ValueError(f"{folder} is not a phantom folder (no truth/truth.json)")
    return json.loads(path.read_text(encoding="utf-8"))


def write_followup_pair(
    out_dir: str | Path,
    *,
    seed: int = 1,
    loss_mm: Mapping[str, float] | None = None,
    interval_days: int = 365,
    reposition_deg: tuple[float, float, float] = (0.0, 0.0, 0.0),
    enhanced: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
    **phantom_kwargs: Any,
) -> PhantomPair:
    """Write a baseline (``out_dir/baseline``) and its follow-up (``out_dir/followup``).

    Parameters
    ----------
    seed, phantom_kwargs
        The baseline knee (:func:`make_phantom` arguments, e.g. ``preset``, ``side``).
    loss_mm
        Thickness loss per region (default :data:`DEFAULT_LOSS_MM`).
    interval_days
        Days from the baseline's Study Date to the follow-up's.
    reposition_deg
        How much the knee is turned in the follow-up (about the LPS axes).
    enhanced, transfer_syntax
        How both series are written (:func:`write_phantom`).
    """
    root = Path(out_dir)
    base = make_phantom(seed, **phantom_kwargs)
    spec = Followup(loss_mm=dict(DEFAULT_LOSS_MM if loss_mm is None else loss_mm),
                    interval_days=interval_days, reposition_deg=reposition_deg)
    follow = make_phantom(seed, **phantom_kwargs, followup=spec)
    kw = {"enhanced": enhanced, "transfer_syntax": transfer_syntax}
    return PhantomPair(baseline=write_phantom(base, root / "baseline", **kw),
                       followup=write_phantom(follow, root / "followup", **kw),
                       loss_mm=spec.losses(), interval_days=interval_days)

"""Selection rules: knee MR volumes become jobs; a CT series and a 2-D localizer are ignored."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from kneenode.errors import ErrorCode
from kneenode.settings import RouteSettings, SelectionSettings
from scp.announce import CompletedSeries
from scp.summary import summarize_series
from tests.support.mr import mr_series
from tests.workers.conftest import Cluster
from workers.selection import read_headers, rules_for, select

KNEE = {"modality": "MR", "series_description": "Sag PD SPACE",
        "geometry": {"is_3d": True, "slices": 160, "consistent": True, "reason": None}}


@pytest.mark.parametrize("text", [
    "SAG 3D DESS KNEE", "qDESS_sag", "Knie re PD", "genou droit", "rodilla T2", "CUBE PD",
    "t2_space_sag", "PD 3D FS", "3D-PD", "Ginocchio", "kolano", "polvi",
])
def test_knee_pattern_matches_languages_and_sequences(text: str) -> None:
    rules = rules_for(SelectionSettings())
    assert select({**KNEE, "series_description": text}, rules).selected


@pytest.mark.parametrize("text", ["AX T1 BRAIN", "workspace test", "SHOULDER PD", "Cubes"])
def test_non_knee_descriptions_are_not_selected(text: str) -> None:
    d = select({**KNEE, "series_description": text}, rules_for(SelectionSettings()))
    assert not d.selected and d.code is ErrorCode.NOT_KNEE and repr(text) in d.reason


def test_geometry_rules_and_missing_keys() -> None:
    rules = rules_for(SelectionSettings())
    flat = {**KNEE, "mr_acquisition_type": "2D",
            "geometry": {"is_3d": True, "slices": 19, "consistent": True}}
    assert select(flat, rules).reason == ("not a volume: 19 slice(s) of a 2-D acquisition "
                                          "(needs a 3-D acquisition or >= 20 slices)")
    assert select({**flat, "geometry": {"slices": 20, "consistent": True}}, rules).selected
    assert select({**flat, "mr_acquisition_type": "3D"}, rules).selected  # 3-D: any thickness
    bad = {**KNEE, "geometry": {"is_3d": True, "slices": 60, "consistent": False,
                                "reason": "uneven slice spacing"}}
    assert select(bad, rules).reason == "inconsistent geometry: uneven slice spacing"
    empty = select({}, rules)  # every key missing: not selected, with a reason, no exception
    assert not empty.selected and "modality unknown" in empty.reason


def test_route_overrides_selection() -> None:
    """The former per-AE overrides live on the route the series matched."""
    settings = SelectionSettings()
    scanner = RouteSettings(name="scanner", calling_ae=["KNEESCANNER"], process_all=True)
    ctroom = RouteSettings(name="ct", calling_ae=["CTROOM"], modality=["CT", "MR"], min_slices=5)
    brain = {**KNEE, "series_description": "AX T1 BRAIN"}
    assert not select(brain, rules_for(settings)).selected
    assert select(brain, rules_for(settings, scanner)).selected
    ct = {"modality": "CT", "series_description": "knee", "geometry": {"slices": 6,
                                                                        "consistent": True}}
    assert select(ct, rules_for(settings, ctroom)).selected
    assert not select(ct, rules_for(settings)).selected


def _localizer(folder: Path) -> None:
    """A three-plane localizer: 3 slices, 2-D, three orientations."""
    paths = mr_series(folder, slices=3, description="LOCALIZER")
    for path, iop in zip(paths, ([0, 1, 0, 0, 0, -1], [1, 0, 0, 0, 0, -1], [1, 0, 0, 0, 1, 0])):
        ds = dcmread(path)
        ds.ImageOrientationPatient, ds.MRAcquisitionType = iop, "2D"
        ds.save_as(path)


def test_ct_and_localizer_ignored_with_reasons(
    cluster_factory: Callable[..., Cluster], tmp_path: Path
) -> None:
    c = cluster_factory()  # no workers needed: ignored series never reach a queue
    ct_dir, loc_dir, knee_dir = tmp_path / "ct", tmp_path / "loc", tmp_path / "knee"
    mr_series(ct_dir, slices=30, modality="CT", description="CT KNEE")
    _localizer(loc_dir)
    mr_series(knee_dir, slices=24)
    flat_dir = tmp_path / "flat"  # a 2-D stack of 8 thick slices: consistent, but no volume
    for path in mr_series(flat_dir, slices=8, spacing=4.0, description="COR PD KNEE"):
        ds = dcmread(path)
        ds.MRAcquisitionType = "2D"
        ds.save_as(path)
    ids = {}
    for name, folder in (("ct", ct_dir), ("loc", loc_dir), ("knee", knee_dir),
                         ("flat", flat_dir)):
        summary = {**summarize_series(folder), "calling_ae": "PACS", "version": 1}
        series = CompletedSeries(summary["study_uid"], summary["series_uid"], 1, folder, summary)
        ids[name] = c.creator.create(series)
    ct, loc, knee = (c.store.get(ids[k]) for k in ("ct", "loc", "knee"))
    assert ct["state"] == "ignored" and ct["reason"] == "modality CT is not one of ['MR']"
    assert ct["error"]["code"] == "NOT_SELECTED"
    assert loc["state"] == "ignored" and loc["reason"].startswith("inconsistent geometry")
    assert "orientation" in loc["reason"]
    assert knee["state"] == "queued"  # selected: its first stage message is waiting
    flat = c.store.get(ids["flat"])
    assert flat["state"] == "ignored" and flat["reason"].startswith("not a volume: 8 slice(s)")
    assert [e["kind"] for e in c.store.events(ids["ct"])] == ["created", "ignored"]
    assert c.store.counters()["series_completed"] == 4


def test_headers_read_from_files_when_summary_lacks_geometry(tmp_path: Path) -> None:
    mr_series(tmp_path / "s", slices=24)
    info = read_headers(tmp_path / "s")
    assert info["modality"] == "MR" and info["geometry"]["slices"] == 24
    assert info["mr_acquisition_type"] == "3D"
    summary = {"series_description": "SAG 3D DESS KNEE"}  # no modality, no geometry
    assert select(summary, rules_for(SelectionSettings()), tmp_path / "s").selected

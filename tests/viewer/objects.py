"""The DICOM objects the browser test opens: a `small` phantom study and our result objects.

The results are produced by the node's own encoders (``pipeline.encode.encode_results``, which
adds the SR's viewer outlines of :mod:`pipeline.encode.sr_viewer`) from the phantom's truth label
map and truth measurements, exactly as the ``encode`` stage calls them. Two deliberately broken variants prove that the
browser check can fail, each in a study of its own (a copy of the good study with new UIDs):

- ``broken-seg``: the SEG's frames shifted by one slice (positions and source references agree
  with each other, so the SEG is self-consistent but lies one slice off the anatomy);
- ``broken-sr``: the SR as :func:`pipeline.encode.sr.encode_sr` alone writes it, without the
  viewer outlines: volumetric groups that reference only SEG segments (the layout stock OHIF 3.13
  crashes on, issue 9).
"""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from kneenode.settings import EncodeSettings
from pipeline.encode import encode_results, write_results
from pipeline.encode.common import TISSUES, load_source
from pipeline.encode.sr import encode_sr

DEMO_MODEL = {"algorithm_name": "kneenode-phantom-demo", "algorithm_version": "0.1.0", "is_demo": True}
ALL_STEPS = ["list", "mr", "seg", "sr", "overlay", "pdf"]


@dataclass
class Study:
    """One study to open: its files, the steps to run on it and what the viewer must show.

    ``delivered`` are the files the node sends (C-STORE, as its ``deliver`` stage does); the other
    files are put into the PACS beforehand (the source series is there before the node runs).
    """

    name: str
    study_uid: str
    files: list[Path]
    steps: list[str] = field(default_factory=lambda: list(ALL_STEPS))
    expect: dict[str, Any] = field(default_factory=dict)
    delivered: list[Path] = field(default_factory=list)

    def config(self) -> dict[str, Any]:
        """This study's entry in the browser check's config (check.mjs)."""
        return {"name": self.name, "uid": self.study_uid, "steps": self.steps, "expect": self.expect}


def phantom_results(truth: dict[str, Any]) -> dict[str, Any]:
    """results.json of a phantom job, from its truth (volumes, thickness, T2, side)."""
    results: dict[str, Any] = {"side": truth["side"]}
    for part in ("volumes_ml", "thickness_mm", "t2_ms"):
        results.update(truth.get(part, {}))
    return results


def ohif_number(value: float) -> str:
    """A number as OHIF's SR panel prints it: ``Number(v).toFixed(2)``, and '' for 0."""
    if not value:
        return ""
    return str(Decimal(float(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def sr_display_values(sr: Dataset) -> dict[str, list[str]]:
    """Tracking identifier -> every measurement as the viewer must show it ("Volume: 7.61 ml")."""
    out: dict[str, list[str]] = {}
    imaging = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    for group in imaging.ContentSequence:
        key = next(str(i.TextValue) for i in group.ContentSequence
                   if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "112039")
        for item in group.ContentSequence:
            if item.ValueType != "NUM":
                continue
            mv = item.MeasuredValueSequence[0]
            unit = mv.MeasurementUnitsCodeSequence[0].CodeValue
            out.setdefault(key, []).append(
                f"{item.ConceptNameCodeSequence[0].CodeMeaning}: {ohif_number(mv.NumericValue)} {unit}")
    return out


def _expectations(labels: np.ndarray, source: list[Dataset], encoded: Any) -> dict[str, Any]:
    """What the viewer must show: segment names, where each segment lies, one voxel, SR values."""
    seg = encoded.seg
    names = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    slices, voxels = {}, {}
    for label, (_, name) in TISSUES.items():
        hits = np.flatnonzero((labels == label).any(axis=(1, 2)))
        slices[name] = [int(hits.min()), int(hits.max())] if hits.size else None
        voxels[name] = int((labels == label).sum())
    # A voxel inside the femoral cartilage on its middle slice, and its patient position.
    k = (slices["Femoral cartilage"][0] + slices["Femoral cartilage"][1]) // 2
    rows, cols = np.nonzero(labels[k] == 4)
    r, c = int(rows[len(rows) // 2]), int(cols[len(cols) // 2])
    ds = source[k]
    ipp = np.array(ds.ImagePositionPatient, float)
    iop = np.array(ds.ImageOrientationPatient, float)
    dr, dc = (float(x) for x in ds.PixelSpacing)
    world = ipp + iop[:3] * c * dc + iop[3:] * r * dr
    name = source[0].PatientName
    return {
        "patient_name_shown": f"{name.family_name}, {name.given_name}",
        "display_sets": 5,
        "series": {
            "mr": str(source[0].SeriesInstanceUID),
            "seg": str(seg.SeriesInstanceUID),
            "sr": str(encoded.sr.SeriesInstanceUID),
            "overlay": str(encoded.overlay[0].SeriesInstanceUID),
            "pdf": str(encoded.pdf.SeriesInstanceUID),
        },
        "slices": len(source),
        "sop_uids": [str(d.SOPInstanceUID) for d in source],
        "segment_names": names,
        "segment_slices": slices,
        "segment_voxels": voxels,
        "probe": {"slice": k, "row": r, "col": c, "world": world.tolist(), "segment": "Femoral cartilage",
                  "sop_uid": str(ds.SOPInstanceUID)},
        "sr_values": sr_display_values(encoded.sr),
    }


def build_good(root: Path, *, options: EncodeSettings | None = None, seed: int = 11) -> tuple[Study, Path]:
    """Phantom MR series + SEG, SR, overlay series and PDF, as the ``encode`` stage writes them.

    Returns the study and the path of the same SR (same UIDs) as :func:`encode_sr` alone writes
    it, without the viewer outlines that :func:`encode_results` adds (for ``broken-sr``).
    """
    from pipeline.phantom import make_phantom, write_phantom

    ph = make_phantom(seed, "small", side="right", orientation="sagittal")
    paths = write_phantom(ph, root / "phantom")
    results = phantom_results(json.loads(paths.truth_json.read_text()))
    source = load_source(list(paths.dicom_files), pixels=True)
    encoded = encode_results(source=source, labels=ph.labels, results=results, model=DEMO_MODEL,
                             options=options or EncodeSettings())
    out = write_results(encoded, root / "results")
    plain_sr = encode_sr(source=source, seg=encoded.seg, results=results, model=DEMO_MODEL,
                         options=options)
    plain_sr.SeriesInstanceUID = encoded.sr.SeriesInstanceUID
    plain_sr.SOPInstanceUID = plain_sr.file_meta.MediaStorageSOPInstanceUID = encoded.sr.SOPInstanceUID
    plain = root / "plain-sr.dcm"
    plain_sr.save_as(plain, enforce_file_format=True)
    study = Study("good", str(source[0].StudyInstanceUID), list(paths.dicom_files), delivered=out)
    study.expect = _expectations(ph.labels, source, encoded)
    study.expect["results"] = results
    return study, plain


_UID_KEYWORDS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "ReferencedSOPInstanceUID",
                 "MediaStorageSOPInstanceUID", "FrameOfReferenceUID", "UID"}


def _remap(ds: Dataset, uid_map: dict[str, str], study_uid: str) -> None:
    """Rewrite every study/series/instance UID in ``ds`` (recursively) through ``uid_map``."""
    def visit(d: Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value:
                    visit(item)
            elif elem.keyword in _UID_KEYWORDS and elem.value:
                old = str(elem.value)
                elem.value = study_uid if elem.keyword == "StudyInstanceUID" else uid_map.setdefault(
                    old, generate_uid())
    visit(ds)
    if hasattr(ds, "file_meta"):
        visit(ds.file_meta)


def build_broken(good: Study, plain_sr: Path, root: Path, kind: str) -> Study:
    """A copy of the good study (new UIDs) with its SEG (``kind="seg"``) or SR broken."""
    study_uid = generate_uid()
    uid_map: dict[str, str] = {}
    out = root / f"broken-{kind}"
    out.mkdir(parents=True, exist_ok=True)
    files = []
    expect = copy.deepcopy(good.expect)
    for path in [*good.files, *good.delivered]:
        ds = pydicom.dcmread(path)
        if ds.Modality == "SR" and kind == "sr":
            ds = pydicom.dcmread(plain_sr)
        if ds.Modality == "SEG" and kind == "seg":
            _shift_seg(ds, good.expect["sop_uids"])
        _remap(ds, uid_map, study_uid)
        target = out / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(target, enforce_file_format=True)
        files.append(target)
    expect["series"] = {k: uid_map[v] for k, v in good.expect["series"].items()}
    expect["sop_uids"] = [uid_map[u] for u in good.expect["sop_uids"]]
    expect["probe"]["sop_uid"] = uid_map[good.expect["probe"]["sop_uid"]]
    steps = ["mr", "seg"] if kind == "seg" else ["mr", "sr"]
    return Study(f"broken-{kind}", study_uid, files, steps=steps, expect=expect)


def _shift_seg(ds: Dataset, sop_uids: list[str]) -> None:
    """Move every SEG frame one slice up: its source reference and its position together."""
    positions: dict[str, Any] = {}
    frames = ds.PerFrameFunctionalGroupsSequence
    for frame in frames:
        uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        positions[uid] = copy.deepcopy(frame.PlanePositionSequence[0].ImagePositionPatient)
    nxt = dict(itertools.pairwise(sop_uids))
    for frame in frames:
        src = frame.DerivationImageSequence[0].SourceImageSequence[0]
        uid = str(src.ReferencedSOPInstanceUID)
        target = nxt.get(uid, sop_uids[0])  # the last slice wraps to the first
        src.ReferencedSOPInstanceUID = target
        frame.PlanePositionSequence[0].ImagePositionPatient = copy.deepcopy(positions[target])


def write_config(path: Path, studies: list[Study], **extra: Any) -> None:
    """The browser check's config file (JSON)."""
    path.write_text(json.dumps({**extra, "studies": [s.config() for s in studies]}, indent=1))

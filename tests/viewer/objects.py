"""The studies the browser test opens: the node's own results, and two broken copies.

:func:`node_study` reads what ``kneenode serve`` delivered (SEG, SR, overlay series, PDF) and
derives from it what the viewer must show: segment names, the slices and voxels of every segment
(the SEG's own label map), one probe voxel, every SR value as OHIF prints it. Two deliberately
broken variants prove that the browser check can fail, each in a study of its own (a copy of the
node's study with new UIDs):

- ``broken-seg``: the SEG's frames shifted by one slice (positions and source references agree
  with each other, so the SEG is self-consistent but lies one slice off the anatomy);
- ``broken-sr``: the node's SR without the viewer outlines (what :func:`pipeline.encode.sr.encode_sr`
  alone writes): volumetric groups that reference only SEG segments, the layout stock OHIF 3.13
  crashes on (issue 9).

A third study, ``enhanced`` (issue 13), is the same phantom written as one Enhanced MR object,
processed by the same node: its slices are frames, so every slice is named by its image key
``<SOP Instance UID>/frames/<n>`` (the tail of OHIF's WADO-RS image IDs; ``/frames/1`` for a
single-frame instance), not by its SOP Instance UID alone.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from pipeline.encode import EncodedResults
from pipeline.encode.common import TISSUES, load_source
from pipeline.encode.frames import frame_number

ALL_STEPS = ["list", "mr", "seg", "sr", "overlay", "pdf"]


@dataclass
class Study:
    """One study to open: its files, the steps to run on it and what the viewer must show.

    ``files`` are the source series, ``delivered`` the node's result objects.
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


def image_key(ds: Dataset) -> str:
    """The slice's image as OHIF names it: ``<SOP Instance UID>/frames/<frame>``."""
    return f"{ds.SOPInstanceUID}/frames/{frame_number(ds) or 1}"


def _expectations(labels: np.ndarray, source: list[Dataset], encoded: Any) -> dict[str, Any]:
    """What the viewer must show: segment names, where each segment lies, one voxel, SR values."""
    seg = encoded.seg
    names = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    slices, voxels = {}, {}
    for label, (_, name) in TISSUES.items():
        hits = np.flatnonzero((labels == label).any(axis=(1, 2)))
        slices[name] = [int(hits.min()), int(hits.max())] if hits.size else None
        voxels[name] = int((labels == label).sum())
    # A voxel inside the femoral cartilage on its largest slice, and its patient position.
    k = int(np.argmax((labels == 4).reshape(len(labels), -1).sum(axis=1)))
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
        "image_keys": [image_key(d) for d in source],
        "segment_names": names,
        "segment_slices": slices,
        "segment_voxels": voxels,
        "probe": {"slice": k, "row": r, "col": c, "world": world.tolist(), "segment": "Femoral cartilage",
                  "sop_uid": str(ds.SOPInstanceUID), "image_key": image_key(ds)},
        "sr_values": sr_display_values(encoded.sr),
    }


def seg_label_map(seg: Dataset, source: list[Dataset]) -> np.ndarray:
    """The canonical label map a SEG encodes (tissue segments), aligned to ``source``."""
    import highdicom as hd

    from pipeline.encode import segment_numbers

    numbers = segment_numbers(include_subregions=False)  # canonical label -> segment number
    doc = hd.seg.Segmentation.from_dataset(seg, copy=False)
    wanted = {"segment_numbers": list(numbers.values()), "combine_segments": True,
              "skip_overlap_checks": True}
    if frame_number(source[0]) is not None:  # an Enhanced MR source: its frames, by number
        combined = doc.get_pixels_by_source_frame(
            source_sop_instance_uid=str(source[0].SOPInstanceUID),
            source_frame_numbers=[frame_number(d) for d in source], **wanted)
    else:
        combined = doc.get_pixels_by_source_instance(
            source_sop_instance_uids=[str(d.SOPInstanceUID) for d in source], **wanted)
    labels = np.zeros(combined.shape, np.uint8)
    for label, number in numbers.items():
        labels[combined == number] = label
    return labels


def strip_measurement_sources(sr: Dataset) -> Dataset:
    """The SR without the viewer outlines: what :func:`encode_sr` alone writes (in place)."""
    imaging = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    for group in imaging.ContentSequence:
        for num in (i for i in group.ContentSequence if i.ValueType == "NUM"):
            kept = [c for c in num.get("ContentSequence", [])
                    if not (c.ValueType == "SCOORD" and c.ConceptNameCodeSequence[0].CodeValue == "121112")]
            if kept:
                num.ContentSequence = kept
            elif "ContentSequence" in num:
                del num.ContentSequence
    return sr


def node_study(source_files: list[Path], result_files: list[Path], root: Path,
               name: str = "good") -> tuple[Study, Path]:
    """The study as ``kneenode serve`` left it in the PACS: expectations read from its results.

    Returns the study (nothing left to send: the source was stored and the node delivered the
    results) and a copy of the node's SR without the outlines (for ``broken-sr``).
    """
    source = load_source(list(source_files), pixels=False)
    kinds: dict[str, list[Path]] = {}
    for path in result_files:
        kinds.setdefault(path.parent.name, []).append(path)
    seg = pydicom.dcmread(kinds["seg"][0])
    sr = pydicom.dcmread(kinds["sr"][0])
    overlay = pydicom.dcmread(kinds["overlay"][0], stop_before_pixels=True)
    pdf = pydicom.dcmread(kinds["pdf"][0], stop_before_pixels=True)
    encoded = EncodedResults(seg=seg, sr=sr, overlay=[overlay], pdf=pdf)
    study = Study(name, str(source[0].StudyInstanceUID), list(source_files), delivered=list(result_files))
    study.expect = _expectations(seg_label_map(seg, source), source, encoded)
    root.mkdir(parents=True, exist_ok=True)
    plain = root / f"plain-sr-{name}.dcm"
    strip_measurement_sources(copy.deepcopy(sr)).save_as(plain, enforce_file_format=True)
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
    expect["image_keys"] = [f"{u}/frames/1" for u in expect["sop_uids"]]
    expect["probe"]["sop_uid"] = uid_map[good.expect["probe"]["sop_uid"]]
    expect["probe"]["image_key"] = f"{expect['probe']['sop_uid']}/frames/1"
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

"""DICOM SEG (BINARY) of the canonical label map: one SCT-coded segment per tissue.

Why not ``highdicom.seg.Segmentation`` alone: for 9 segments of a 160 x 384 x 384 series it builds
1440 per-frame functional group items as pydicom datasets and then pydicom serialises them, about
0.8 s to build plus 0.9 s to write here. We let highdicom build and validate everything that
does not scale with the number of frames (segment descriptions, references to every source
instance, shared functional groups, dimension organisation) from a *skeleton* label map that has
exactly one frame per source slice (segment 1). Its per-frame items are encoded once to bytes; the
items of the other segments differ only in two fixed-width values (Referenced Segment Number and
the first Dimension Index Value) and are produced by patching those bytes. Pixel data are packed
with numpy. The result is byte-for-byte the layout highdicom writes and reads back (tests re-read it
with ``highdicom.seg.segread`` voxel for voxel, and dciodvfy checks it).

Segment numbers are consecutive as the standard requires: tissues 1-9 keep their canonical label
as segment number; femoral subregions 11-15 become segments 10-14 (:func:`segment_numbers`).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.spatial import VOLUME_INDEX_CONVENTION, get_normal_vector
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
from pydicom.valuerep import format_number_as_ds

from kneenode.settings import EncodeSettings
from pipeline.encode.common import (
    COLORS,
    SUBREGIONS,
    TISSUES,
    AlgorithmInfo,
    check_label_map,
    encode_error,
    load_source,
    new_uid,
    series_description,
    series_number,
    slice_positions,
)
from pipeline.encode.frames import frame_number, instance_references
from pipeline.encode.rawseq import encode_item, raw_sequence

_CARTILAGE = Code("309312004", "SCT", "Cartilage")
_MENISCUS = Code("74135004", "SCT", "Meniscus")
_KNEE = Code("49076000", "SCT", "Knee joint")
_SIDE = {"left": Code("7771000", "SCT", "Left"), "right": Code("24028007", "SCT", "Right")}
_MEDIAL = Code("255561001", "SCT", "Medial")
_LATERAL = Code("49370004", "SCT", "Lateral")
_ANTERIOR = Code("255549009", "SCT", "Anterior")
_POSTERIOR = Code("255551008", "SCT", "Posterior")

#: label -> (segmented property type, type modifiers, primary anatomic structure)
_TYPES: dict[int, tuple[Code, tuple[Code, ...], Code | None]] = {
    1: (codes.SCT.Femur, (), None),
    2: (codes.SCT.Tibia, (), None),
    3: (codes.SCT.Patella, (), None),
    4: (_CARTILAGE, (), codes.SCT.Femur),
    5: (_CARTILAGE, (_MEDIAL,), codes.SCT.Tibia),
    6: (_CARTILAGE, (_LATERAL,), codes.SCT.Tibia),
    7: (_CARTILAGE, (), codes.SCT.Patella),
    8: (_MENISCUS, (_MEDIAL,), None),
    9: (_MENISCUS, (_LATERAL,), None),
    11: (_CARTILAGE, (_ANTERIOR,), codes.SCT.Femur),
    12: (_CARTILAGE, (_MEDIAL,), codes.SCT.Femur),
    13: (_CARTILAGE, (_LATERAL,), codes.SCT.Femur),
    14: (_CARTILAGE, (_MEDIAL, _POSTERIOR), codes.SCT.Femur),
    15: (_CARTILAGE, (_LATERAL, _POSTERIOR), codes.SCT.Femur),
}

_PFFG = Tag(0x5200, 0x9230)
_SEG_NUMBER_ELEM = struct.pack("<HH", 0x0062, 0x000B) + b"US" + struct.pack("<H", 2)
_DIM_INDEX_ELEM = struct.pack("<HH", 0x0020, 0x9157) + b"UL" + struct.pack("<H", 8)


def segment_numbers(*, include_subregions: bool) -> dict[int, int]:
    """Canonical label -> SEG segment number (consecutive from 1, as the standard requires)."""
    labels = list(TISSUES) + (list(SUBREGIONS) if include_subregions else [])
    return {label: i + 1 for i, label in enumerate(labels)}


def algorithm_family(info: AlgorithmInfo) -> Code:
    """CID 7162 code for the model card's family (Artificial Intelligence when unknown)."""
    wanted = info.family.replace(" ", "").replace("-", "").lower()
    for keyword in codes.cid7162.dir():
        if keyword.lower() == wanted:
            return getattr(codes.cid7162, keyword)  # type: ignore[no-any-return]
    return codes.cid7162.ArtificialIntelligence  # type: ignore[no-any-return]


def algorithm_identification(info: AlgorithmInfo) -> hd.AlgorithmIdentificationSequence:
    """highdicom's Algorithm Identification Sequence for the model card."""
    return hd.AlgorithmIdentificationSequence(
        name=info.name, family=algorithm_family(info), version=info.version
    )


def segment_descriptions(
    *, info: AlgorithmInfo, include_subregions: bool, side: str | None
) -> list[hd.seg.SegmentDescription]:
    """One SCT-coded description per segment (category Anatomical Structure, no SRT codes)."""
    algo = algorithm_identification(info)
    out = []
    for label, number in segment_numbers(include_subregions=include_subregions).items():
        key, text = TISSUES.get(label) or SUBREGIONS[label]
        prop_type, modifiers, structure = _TYPES[label]
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=text,
            segmented_property_category=codes.SCT.AnatomicalStructure,
            segmented_property_type=prop_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
            tracking_uid=hd.UID(),
            tracking_id=key,
            anatomic_regions=[_KNEE],
            primary_anatomic_structures=[structure] if structure is not None else None,
            display_color=hd.color.CIELabColor.from_rgb(*COLORS[label]),
        )
        if modifiers:
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept.from_code(m) for m in modifiers
            ]
        if side is not None:
            desc.AnatomicRegionSequence[0].AnatomicRegionModifierSequence = [
                hd.sr.CodedConcept.from_code(_SIDE[side])
            ]
        out.append(desc)
    return out


def _masks(labels: np.ndarray, include_subregions: bool) -> list[tuple[int, np.ndarray | int]]:
    """(segment number, label value or tuple of values) in segment order."""
    numbers = segment_numbers(include_subregions=include_subregions)
    fem = (4, *SUBREGIONS)  # the femoral cartilage segment is the union of its subregions
    return [(n, fem if label == 4 else label) for label, n in numbers.items()]  # type: ignore[misc]


def _patch(item: bytes, segment: int) -> bytes:
    """Set Referenced Segment Number and Dimension Index Values[0] of an encoded frame item."""
    out = bytearray(item)
    for marker, fmt in ((_SEG_NUMBER_ELEM, "<H"), (_DIM_INDEX_ELEM, "<I")):
        at = out.find(marker)
        if at < 0 or out.find(marker, at + 1) >= 0:
            raise encode_error("unexpected per-frame item layout in the SEG skeleton")
        start = at + len(marker)
        out[start : start + struct.calcsize(fmt)] = struct.pack(fmt, segment)
    return bytes(out)


def _frame_plan(
    labels: np.ndarray, values: list[tuple[int, Any]], keep_empty: bool
) -> tuple[list[tuple[int, int]], bytes]:
    """Frames as (segment, slice index) in dimension order, and their BINARY pixel data.

    Bits of all frames are packed contiguously (little-endian bit order); when a frame is a whole
    number of bytes each segment is packed on its own so only one mask is held at a time.
    """
    frames: list[tuple[int, int]] = []
    chunks: list[np.ndarray] = []
    aligned = (labels.shape[1] * labels.shape[2]) % 8 == 0
    for number, value in values:
        if isinstance(value, tuple):
            lut = np.zeros(256, dtype=bool)
            lut[list(value)] = True
            mask = lut[labels]
        else:
            mask = labels == value
        if not keep_empty:
            chosen = np.flatnonzero(mask.any(axis=(1, 2)))
            if chosen.size == 0:  # every segment keeps at least one frame
                chosen = np.array([0])
            mask = mask[chosen]
        else:
            chosen = np.arange(labels.shape[0])
        frames.extend((number, int(i)) for i in chosen)
        chunks.append(np.packbits(mask, axis=None, bitorder="little") if aligned else mask)
    if aligned:
        data = b"".join(c.tobytes() for c in chunks)
    else:
        data = np.packbits(np.concatenate(chunks), axis=None, bitorder="little").tobytes()
    return frames, data + b"\x00" if len(data) % 2 else data


def _skeleton(
    first: Dataset, descriptions: list[hd.seg.SegmentDescription], **kwargs: Any
) -> hd.seg.Segmentation:
    """highdicom SEG of the first source slice only (segment 1 at one pixel): the template.

    A frame of a multi-frame source is given to highdicom as a single-frame MR image (highdicom
    takes an Enhanced MR SOP class to mean "read the functional groups"); every reference to the
    source is rewritten afterwards with the real SOP class and frame number.
    """
    stub = np.zeros((1, int(first.Rows), int(first.Columns)), dtype=np.uint8)
    stub[0, 0, 0] = 1
    if frame_number(first) is not None:
        first = Dataset(dict(first.items()))  # shares the elements: replace, never modify
        first.add_new("SOPClassUID", "UI", MRImageStorage)
    return hd.seg.Segmentation(
        source_images=[first],
        pixel_array=stub,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        omit_empty_frames=True,
        **kwargs,
    )


def position_indices(datasets: Sequence[Dataset]) -> np.ndarray:
    """1-based index of each slice along the normal, as highdicom numbers plane positions."""
    normal = get_normal_vector(
        datasets[0].ImageOrientationPatient, index_convention=VOLUME_INDEX_CONVENTION
    )
    distances = np.array(
        [np.dot(normal, np.asarray(d.ImagePositionPatient, float)) for d in datasets]
    )
    ranks = np.empty(len(datasets), dtype=int)
    ranks[np.argsort(distances, kind="stable")] = np.arange(1, len(datasets) + 1)
    return ranks


def encode_seg(
    *,
    source: Sequence[Dataset | str | Path],
    labels: np.ndarray,
    model: Mapping[str, Any] | AlgorithmInfo,
    side: str | None = None,
    options: EncodeSettings | None = None,
    software_version: str = "kneenode",
) -> Dataset:
    """Encode the canonical label map as a BINARY DICOM SEG of the source series.

    Parameters
    ----------
    source
        The source series: datasets sorted along the slice normal (as the label map), or paths.
    labels
        Canonical label map (slices, rows, columns), aligned to ``source``.
    model
        Model card (``ModelCard.as_dict()``) or :class:`AlgorithmInfo`.
    side
        ``"left"``/``"right"`` knee (written as laterality of the anatomic region), or None.
    options
        The ``encode`` settings (empty frames, subregion segments, numbering, UID root).
    software_version
        Software Versions of the node.

    Returns
    -------
    pydicom.dataset.Dataset
        The SEG instance (with file meta), ready to write or send.
    """
    opts = options or EncodeSettings()
    info = AlgorithmInfo.from_card(model)
    if side not in (None, "left", "right"):
        raise encode_error(f"side must be 'left', 'right' or None, got {side!r}")
    datasets = load_source(source, pixels=False)
    lab = check_label_map(labels, datasets)
    descs = segment_descriptions(info=info, include_subregions=opts.seg_subregions, side=side)
    skel = _skeleton(
        datasets[0],
        descs,
        series_instance_uid=new_uid(opts.uid_prefix),
        series_number=series_number(datasets[0], "seg", opts.series_number_base),
        sop_instance_uid=new_uid(opts.uid_prefix),
        instance_number=1,
        manufacturer=opts.manufacturer,
        manufacturer_model_name="kneenode",
        software_versions=software_version,
        device_serial_number=opts.device_serial_number,
        content_description=f"Knee segmentation by {info.label}"[:64],
        content_label="KNEE",
    )
    return _assemble(skel, lab, datasets, opts)


def _assemble(
    skel: hd.seg.Segmentation, lab: np.ndarray, datasets: list[Dataset], opts: EncodeSettings
) -> Dataset:
    """Extend the one-slice template to the whole series (references, frames, pixels)."""
    template = skel.PerFrameFunctionalGroupsSequence[0]
    source_ref = template.DerivationImageSequence[0].SourceImageSequence[0]
    per_slice: list[bytes] = []
    for d, pos in zip(datasets, position_indices(datasets), strict=True):
        source_ref.ReferencedSOPClassUID = d.SOPClassUID
        source_ref.ReferencedSOPInstanceUID = d.SOPInstanceUID
        if frame_number(d) is not None:  # the frame of a multi-frame source
            source_ref.ReferencedFrameNumber = frame_number(d)
        template.PlanePositionSequence[0].ImagePositionPatient = [
            format_number_as_ds(float(v)) for v in d.ImagePositionPatient
        ]
        template.FrameContentSequence[0].DimensionIndexValues = [1, int(pos)]
        per_slice.append(encode_item(template))
    values = _masks(lab, opts.seg_subregions)
    frames, pixels = _frame_plan(lab, values, opts.seg_keep_empty_frames)
    items = b"".join(_patch(per_slice[i], n) for n, i in frames)

    ds = Dataset()
    for elem in skel:
        if elem.tag not in (_PFFG, Tag("PixelData")):
            ds.add(elem)
    ds.file_meta = FileMetaDataset(skel.file_meta)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    _reference_all(ds, datasets)
    ds.NumberOfFrames = len(frames)
    ds.SegmentsOverlap = "YES" if opts.seg_subregions else "NO"
    ds.SeriesDescription = series_description(datasets[0], "seg", opts.description_prefix)
    ds[_PFFG] = raw_sequence(_PFFG, items)  # type: ignore[assignment]
    ds.add_new("PixelData", "OB", pixels)
    ds.set_original_encoding(False, True, ds._character_set)
    return ds


def _reference_all(ds: Dataset, datasets: list[Dataset]) -> None:
    """Reference every source instance (the template referenced the first) and fix the spacing.

    A multi-frame source is one instance: referenced once, its Source Image item listing the
    frames the SEG covers.
    """
    ds.SourceImageSequence = instance_references(datasets, with_frames=True)
    ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence = instance_references(
        datasets, with_frames=False
    )
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if len(datasets) > 1:
        steps = np.abs(np.diff(slice_positions(datasets)))
        if np.allclose(steps, steps.mean(), rtol=0, atol=1e-3):
            measures.SpacingBetweenSlices = format_number_as_ds(float(steps.mean()))
        elif "SpacingBetweenSlices" in measures:
            del measures.SpacingBetweenSlices


def seg_bytes(ds: Dataset) -> bytes:
    """Serialise a SEG from :func:`encode_seg` (the per-frame items are written as built)."""
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()

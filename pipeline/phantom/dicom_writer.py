"""Write a phantom as a DICOM MR Image Storage series (one file per slice and echo).

Why a complete header: the phantom stands in for a scanner in every test of the node (selection,
reader, encoders that copy Patient/Study, dciodvfy), so it carries the Patient, General Study,
General Series, Frame of Reference, General Equipment, General Image, Image Plane, Image Pixel, MR
Image, VOI LUT and SOP Common modules. The patient is unmistakably synthetic (name
``PHANTOM^KNEE^SEED<n>``, ID ``KNEENODE-PHANTOM-<n>``, identity-removed flag set). qDESS series also
carry the GE private gradient tags (0019,10B6) GlArea and (0019,10B7) Tg that the analytic T2
formula reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from pipeline.phantom.pose import ImageGrid

if TYPE_CHECKING:
    from pipeline.phantom.build import Phantom

GE_CREATOR = "GEMS_ACQU_01"
STUDY_DATE = "20260101"  # of a baseline phantom; a follow-up has its own (Phantom.study_date)
STUDY_TIME = "120000"


def _uid(phantom: Phantom, what: str) -> UID:
    """Deterministic UID under the 2.25 (UUID-derived) root, from the phantom's identity.

    Same phantom, same UIDs: re-writing a phantom gives byte-identical files; phantoms that differ
    in anything recorded in truth.json (seed, grid, pose, thickness, T2, imaging) get other UIDs.
    """
    identity = json.dumps(phantom.truth, sort_keys=True, default=str)  # seed, grid, pose, truth
    key = f"kneenode-phantom/{identity}/{what}"
    value = int.from_bytes(hashlib.sha256(key.encode()).digest()[:16], "big")
    return UID(f"2.25.{value}")


def to_stored(image: np.ndarray) -> np.ndarray:
    """Float image (stored-value units) -> uint16 pixel data."""
    return np.clip(np.rint(image), 0, 65535).astype(np.uint16)


def _common(phantom: Phantom) -> dict[str, Any]:
    """Attributes shared by every instance of the series."""
    g = phantom.grid
    ni, nj, _ = g.size
    seed = phantom.seed
    plane = {"sagittal": "SAG", "coronal": "COR", "axial": "AX", "oblique": "OBL"}[phantom.orientation]
    desc = f"{plane} 3D {'QDESS' if phantom.qdess else 'DESS'} KNEE PHANTOM"
    qp = phantom.qdess_params
    day = phantom.study_date
    return {
        "SpecificCharacterSet": "ISO_IR 100",
        "SOPClassUID": MRImageStorage,
        "PatientName": f"PHANTOM^KNEE^SEED{seed}",
        "PatientID": f"KNEENODE-PHANTOM-{seed:06d}",
        "PatientBirthDate": "",
        "PatientSex": "O",
        "PatientIdentityRemoved": "YES",
        "DeidentificationMethod": "Synthetic phantom: no patient data",
        "StudyInstanceUID": _uid(phantom, "study"),
        "StudyDate": day,
        "StudyTime": STUDY_TIME,
        "ReferringPhysicianName": "",
        "StudyID": f"PH{seed % 100000:05d}",
        "AccessionNumber": "",
        "StudyDescription": "SYNTHETIC KNEE PHANTOM",
        "Modality": "MR",
        "SeriesInstanceUID": _uid(phantom, "series"),
        "SeriesNumber": 1,
        "SeriesDate": day,
        "SeriesTime": STUDY_TIME,
        "SeriesDescription": desc,
        "ProtocolName": desc,
        "BodyPartExamined": "KNEE",
        "Laterality": "R" if phantom.side == "right" else "L",
        "PatientPosition": "FFS",
        "FrameOfReferenceUID": _uid(phantom, "for"),
        "PositionReferenceIndicator": "",
        "Manufacturer": "kneenode",
        "ManufacturerModelName": "synthetic knee phantom",
        "SoftwareVersions": f"phantom {phantom.truth.get('generator_version', '1')}",
        "DeviceSerialNumber": "PHANTOM",
        "StationName": "PHANTOM",
        "AcquisitionNumber": 1,
        "ContentDate": day,
        "ContentTime": STUDY_TIME,
        "AcquisitionDate": day,
        "AcquisitionTime": STUDY_TIME,
        "ImageType": ["ORIGINAL", "PRIMARY", "OTHER"],
        "BurnedInAnnotation": "NO",
        **plane_attributes(g),
        "ScanningSequence": ["GR"],
        "SequenceVariant": ["SS"],
        "ScanOptions": "",
        "MRAcquisitionType": "3D",
        "SequenceName": "qdess3d" if phantom.qdess else "dess3d",
        "AngioFlag": "N",
        "RepetitionTime": f"{qp.tr_ms:.6g}",
        "EchoTrainLength": 2 if phantom.qdess else 1,
        "NumberOfAverages": "1",
        "ImagingFrequency": "127.74",
        "ImagedNucleus": "1H",
        "MagneticFieldStrength": "3",
        "FlipAngle": f"{qp.flip_deg:.6g}",
        "ReceiveCoilName": "KNEE",
        "AcquisitionMatrix": [0, ni, nj, 0],
        "InPlanePhaseEncodingDirection": "ROW",
        "PixelBandwidth": "244",
        "WindowCenter": "1000",
        "WindowWidth": "2000",
    }


def plane_attributes(g: ImageGrid) -> dict[str, Any]:
    """Image Plane and Image Pixel attributes (16-bit unsigned) of every slice of ``g``."""
    ni, nj, _ = g.size
    return {
        "PixelSpacing": [f"{g.spacing[1]:.6g}", f"{g.spacing[0]:.6g}"],
        "ImageOrientationPatient": [f"{v:.8f}" for v in (*g.matrix[:, 0], *g.matrix[:, 1])],
        "SliceThickness": f"{g.spacing[2]:.6g}",
        "SpacingBetweenSlices": f"{g.spacing[2]:.6g}",
        "SamplesPerPixel": 1,
        "PhotometricInterpretation": "MONOCHROME2",
        "Rows": nj,
        "Columns": ni,
        "BitsAllocated": 16,
        "BitsStored": 16,
        "HighBit": 15,
        "PixelRepresentation": 0,
    }


def write_slices(
    common: dict[str, Any],
    stored: np.ndarray,
    grid: ImageGrid,
    folder: Path,
    sop_uids: Sequence[str],
    *,
    first_number: int = 1,
    per_slice: Callable[[Dataset, int], None] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Path]:
    """One MR Image Storage file per slice k of ``stored`` (k, rows, columns; uint16).

    ``common`` holds every attribute the slices share (:func:`plane_attributes` among them);
    each slice gets its SOP Instance UID, Instance Number, position and slice location, then
    ``per_slice(ds, k)`` may add more. Files are ``MR<instance number>.dcm``.
    """
    normal = grid.matrix[:, 2]
    paths = []
    for k, pos in enumerate(grid.slice_positions()):
        number = first_number + k
        ds = _dataset(common)
        ds.SOPInstanceUID = sop_uids[k]
        ds.InstanceNumber = number
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.SliceLocation = f"{float(np.dot(normal, pos)):.6f}"
        if per_slice is not None:
            per_slice(ds, k)
        ds.file_meta = _file_meta(ds.SOPInstanceUID)
        _set_pixels(ds, stored[k], transfer_syntax)
        path = folder / f"MR{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _dataset(common: dict[str, Any]) -> Dataset:
    ds = Dataset()
    for key, value in common.items():
        setattr(ds, key, value)
    return ds


def write_dicom_series(
    phantom: Phantom,
    folder: Path,
    *,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Path]:
    """Write the phantom's echoes as one MR series; returns the paths (echo-major, slice order).

    ``transfer_syntax`` may be any syntax pydicom can encode here (Explicit VR Little Endian by
    default; RLE Lossless and JPEG 2000 Lossless work with the installed pylibjpeg plugins).
    """
    folder.mkdir(parents=True, exist_ok=True)
    common = _common(phantom)
    positions = phantom.grid.slice_positions()
    qp = phantom.qdess_params
    paths: list[Path] = []
    # As GE writes it: the whole acquisition's image count (echoes x slices), which lets a
    # receiver see a complete series without waiting (see docs/conformance.md, completion).
    common["ImagesInAcquisition"] = len(phantom.echoes) * len(positions)
    for e, (echo, te) in enumerate(zip(phantom.echoes, phantom.echo_times_ms, strict=True)):

        def per_slice(ds: Dataset, k: int, e: int = e, te: float = te) -> None:
            ds.EchoTime = f"{te:.6g}"
            ds.EchoNumbers = e + 1
            if phantom.qdess:
                block = ds.private_block(0x0019, GE_CREATOR, create=True)
                block.add_new(0xB6, "DS", f"{qp.gl_area:.6g}")
                block.add_new(0xB7, "DS", f"{qp.tg_us:.6g}")

        uids = [_uid(phantom, f"sop/{e}/{k}") for k in range(len(positions))]
        paths += write_slices(common, to_stored(echo), phantom.grid, folder, uids,
                              first_number=len(paths) + 1, per_slice=per_slice,
                              transfer_syntax=transfer_syntax)
    return paths


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "KNEENODE_PH"
    return meta


def _set_pixels(ds: Dataset, pixels: np.ndarray, transfer_syntax: str) -> None:
    if UID(transfer_syntax) == ExplicitVRLittleEndian:
        ds.PixelData = np.ascontiguousarray(pixels).tobytes()
        return
    ds.compress(UID(transfer_syntax), np.ascontiguousarray(pixels), generate_instance_uid=False)


def series_paths(folder: Path) -> Sequence[Path]:
    """The instance files of a written phantom series, in name order."""
    return sorted(folder.glob("MR*.dcm"))

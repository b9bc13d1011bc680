"""A tiny synthetic MR series, label map, results and model card for the encoder tests.

Stand-in input until tests can use the knee phantom (pipeline.phantom): a few sagittal slices with
geometry like a real knee series, so SEG geometry, references and round trips are exercised.
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def make_series(n: int = 12, rows: int = 64, cols: int = 48, seed: int = 0) -> list[Dataset]:
    """``n`` single-frame MR slices, sorted along the slice normal (sagittal, +x)."""
    rng = np.random.default_rng(seed)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID = "Phantom^Knee", "PH-0001"
        ds.PatientBirthDate, ds.PatientSex = "19800101", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20260101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "ACC1", ""
        ds.StudyDescription = "MR KNEE"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 3, i + 1
        ds.SeriesDescription = "SAG 3D DESS"
        ds.Manufacturer = "Synthetic"
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-20.0 + 0.7 * i, -30.0, 40.0]
        ds.PixelSpacing, ds.SliceThickness = [0.5, 0.4], 0.7
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "SS", ""
        ds.MRAcquisitionType = "3D"
        ds.EchoTime, ds.RepetitionTime, ds.EchoTrainLength = 5.0, 20.0, 1
        ds.MagneticFieldStrength = 3.0
        ds.PixelData = rng.integers(0, 4000, (rows, cols), dtype=np.uint16).tobytes()
        out.append(ds)
    return out


def make_labels(n: int = 12, rows: int = 64, cols: int = 48, subregions: bool = True) -> np.ndarray:
    """Blobs of every canonical label; femoral cartilage split into 11-15 when ``subregions``."""
    lab = np.zeros((n, rows, cols), dtype=np.uint8)
    z, y, x = np.ogrid[:n, :rows, :cols]
    blobs = {
        1: (20, 24, 10),
        2: (48, 24, 9),
        3: (20, 42, 5),
        5: (38, 18, 2),
        6: (38, 30, 2),
        7: (20, 36, 2),
        8: (41, 12, 2),
        9: (41, 36, 2),
    }
    for label, (cy, cx, r) in blobs.items():
        inside = (y - cy) ** 2 + (x - cx) ** 2 < r**2
        lab[(np.broadcast_to(inside, lab.shape)) & (lab == 0) & (z >= 1) & (z < n - 1)] = label
    ring = ((y - 20) ** 2 + (x - 24) ** 2 < 13**2) & ((y - 20) ** 2 + (x - 24) ** 2 >= 10**2)
    ring3 = np.broadcast_to(ring, lab.shape) & (z >= 2) & (z < n - 2) & (lab == 0)
    lab[ring3] = 4
    if subregions:
        sub = np.select(
            [x < 16, (x < 24) & (y >= 20), (x >= 24) & (y >= 20), x < 32, x >= 32],
            [11, 12, 13, 14, 15],
        )
        sub = np.broadcast_to(sub, lab.shape)
        lab[ring3] = sub[ring3]
    lab[n // 2, 0, 0] = 0
    return lab


def make_results() -> dict[str, object]:
    """A results.json as the quantify and shape stages write it."""
    res: dict[str, object] = {
        "side": "right",
        "bscore": 1.234567,
        "nsm_assd_bone_mm": 0.61,
        "nsm_assd_cart_mm": 0.42,
    }
    regions = [
        "ant_fem_cart",
        "med_wb_fem_cart",
        "lat_wb_fem_cart",
        "med_post_fem_cart",
        "lat_post_fem_cart",
        "med_tib_cart",
        "lat_tib_cart",
        "pat_cart",
    ]
    for i, r in enumerate(regions):
        res[f"{r}_mm_mean"] = 1.5 + 0.1 * i + 1e-9
        res[f"{r}_mm_median"] = 1.4 + 0.1 * i
        res[f"{r}_mm_std"] = 0.3 + 0.01 * i
        res[f"{r}_t2_ms_mean"] = 35.0 + i
        res[f"{r}_t2_ms_median"] = 34.0 + i
        res[f"{r}_t2_ms_std"] = 5.0 + i / 3
        res[f"{r}_deep_t2_ms_mean"] = 30.0 + i
        res[f"{r}_superficial_t2_ms_median"] = 40.0 + i
    for name, v in [
        ("femur", 80.1),
        ("tibia", 60.2),
        ("patella", 12.3),
        ("fem_cart", 8.4),
        ("med_tib_cart", 2.5),
        ("lat_tib_cart", 2.6),
        ("pat_cart", 3.7),
        ("med_men", 1.8),
        ("lat_men", 1.9),
    ]:
        res[f"{name}_ml"] = v
    return res


def make_card(demo: bool = True) -> dict[str, object]:
    """A model card as ``ModelCard.as_dict()`` returns it."""
    return {
        "algorithm_name": "kneenode-phantom-demo",
        "algorithm_version": "0.1.0",
        "is_demo": demo,
    }


def highdicom_reference_seg(source: list[Dataset], labels: np.ndarray, card: dict) -> Dataset:
    """The BINARY SEG highdicom's own ``Segmentation`` writes for ``labels`` (no subregions):
    the reference our fast SEG path is compared with (tests) and timed against (benchmark)."""
    import highdicom as hd

    from pipeline.encode.common import AlgorithmInfo
    from pipeline.encode.seg import segment_descriptions

    tissues = labels.copy()
    tissues[(tissues >= 11) & (tissues <= 15)] = 4  # femoral cartilage covers its subregions
    info = AlgorithmInfo.from_card(card)
    return hd.seg.Segmentation(
        source_images=source,
        pixel_array=tissues,
        segmentation_type="BINARY",
        segment_descriptions=segment_descriptions(info=info, include_subregions=False, side=None),
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="x",
        manufacturer_model_name="x",
        software_versions="x",
        device_serial_number="x",
        omit_empty_frames=False,
    )


def make_change(results: dict[str, object], card: dict[str, object]) -> dict[str, object]:
    """results.json's ``change`` for :func:`make_results`: two priors (2025, 2026), the current
    exam 2027-02-05; 0.3 mm lost in med_wb_fem_cart and 0.2 mL in med_tib_cart since 2026."""
    from datetime import date

    from kneenode.settings import ChangeSettings
    from pipeline.change import PriorExam, compute_change, model_id
    from pipeline.results import Results

    def exam(extra_mm: float, extra_ml: float) -> Results:
        data = {k: v for k, v in results.items() if k != "change"}
        data["med_wb_fem_cart_mm_mean"] = float(data["med_wb_fem_cart_mm_mean"]) + extra_mm  # type: ignore[arg-type]
        data["med_tib_cart_ml"] = float(data["med_tib_cart_ml"]) + extra_ml  # type: ignore[arg-type]
        return Results.model_validate({**data, "model": card})

    priors = [PriorExam(date(2025, 1, 10), exam(0.4, 0.3), model_id(card), "job-2025"),
              PriorExam(date(2026, 1, 1), exam(0.3, 0.2), model_id(card), "job-2026")]
    report = compute_change(exam(0.0, 0.0), date(2027, 2, 5), priors, ChangeSettings(),
                            current_job_id="job-2027")
    return report.model_dump(mode="json")

"""TID 1500 Comprehensive 3D SR of the knee measurements, each group referencing its SEG segment.

Layout (one Volumetric ROI measurement group, TID 1411, per structure):

- a group per tissue (labels 1-9) referencing its segment: volume (ml); for tibial and patellar
  cartilage also thickness mean / median / std (mm) and T2 (ms) when present;
- a group per femoral cartilage subregion (11-15) with thickness and T2, referencing the
  subregion's own segment when the SEG has subregion segments, else the femoral cartilage segment
  (the tracking identifier names the subregion);
- a group "femur_shape" referencing the femur segment with the BScore and the NSM fit quality
  (ASSD of bone and cartilage, mm) when the shape stage ran.

Values carry UCUM units; every group carries the algorithm identification and, when known, the
knee side as laterality of the finding site. The tracking identifier of each group is the prefix
of its results.json keys, so :func:`read_sr_measurements` maps the SR back to results.json.
T2 of the deep and superficial halves (``<region>_deep_t2_ms_<stat>``, as the phantom truth and
the old pipeline spell them; ``<region>_t2_ms_deep_<stat>`` is accepted too) is a T2 measurement
whose finding site has the topographical modifier Deep / Superficial. BScore and ASSD have no
standard code: they use the private coding scheme ``99KNEENODE``, declared in the Coding Scheme
Identification Sequence. With a change report (``results["change"]``, status ``compared``) each
group also carries its time point, the prior's values and the change since the prior
(:mod:`pipeline.encode.sr_change`). The segmentation QC outcome (``results["qc"]["outcome"]``) is a
qualitative evaluation (private code ``SEGQC``: ``QCPASS`` / ``QCWARN`` / ``QCFAIL``) in every
group, so no measurement can be read without it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage

from kneenode.settings import EncodeSettings
from pipeline.encode.common import (
    SUBREGIONS,
    TISSUES,
    AlgorithmInfo,
    check_label_map,
    encode_error,
    finite_float,
    knee_side,
    load_source,
    new_uid,
    series_description,
    series_number,
    slice_label_counts,
)
from pipeline.encode.frames import frame_number, unique_instances
from pipeline.encode.rawseq import freeze_sequence, mark_explicit_little
from pipeline.encode.sr_change import (
    CHANGE_CODES,
    PRIVATE_SCHEME,
    change_items,
    compared,
    measurements,
    time_point,
    tracking_uid,
)

BSCORE = Code("BSCORE", PRIVATE_SCHEME, "BScore (femur shape score)")
ASSD_BONE = Code("ASSDBONE", PRIVATE_SCHEME, "NSM fit ASSD bone")
ASSD_CART = Code("ASSDCART", PRIVATE_SCHEME, "NSM fit ASSD cartilage")
#: Segmentation QC (pipeline.qc): a qualitative evaluation in every measurement group.
QC = Code("SEGQC", PRIVATE_SCHEME, "Segmentation quality control")
QC_OUTCOMES = {
    "pass": Code("QCPASS", PRIVATE_SCHEME, "QC passed"),
    "warn": Code("QCWARN", PRIVATE_SCHEME, "QC passed with warnings"),
    "fail": Code("QCFAIL", PRIVATE_SCHEME, "QC failed"),
}
THICKNESS = Code("59089-3", "LN", "Thickness")
VOLUME = Code("118565006", "SCT", "Volume")
T2 = Code("113065", "DCM", "T2")
_KNEE = Code("49076000", "SCT", "Knee joint")
_CARTILAGE = Code("309312004", "SCT", "Cartilage")
_SIDE = {"left": Code("7771000", "SCT", "Left"), "right": Code("24028007", "SCT", "Right")}
_LAYERS = {
    "deep": Code("795002", "SCT", "Deep"),
    "superficial": Code("26283006", "SCT", "Superficial"),
}
_STATS = {
    "mean": Code("373098007", "SCT", "Mean"),
    "median": Code("373099004", "SCT", "Median"),
    "std": Code("386136009", "SCT", "Standard Deviation"),
}
_UNITS = {
    "ml": Code("ml", "UCUM", "milliliter"),
    "mm": Code("mm", "UCUM", "millimeter"),
    "ms": Code("ms", "UCUM", "millisecond"),
    "1": Code("1", "UCUM", "no units"),
}
#: results.json keys of the shape stage (several spellings of the BScore accepted).
BSCORE_KEYS = ("bscore", "Bscore", "BScore")
SHAPE_GROUP = "femur_shape"
_CART_REGIONS = ("med_tib_cart", "lat_tib_cart", "pat_cart", "fem_cart")


def _measurement(
    name: Code, value: float, unit: str, stat: str | None = None, layer: str | None = None
) -> hd.sr.Measurement:
    """One NUM (TID 300); the algorithm is identified once per group, not per measurement."""
    sites = None
    if layer is not None:
        sites = [
            hd.sr.FindingSite(anatomic_location=_CARTILAGE, topographical_modifier=_LAYERS[layer])
        ]
    return hd.sr.Measurement(
        name=name,
        value=value,
        unit=_UNITS[unit],
        derivation=_STATS[stat] if stat else None,
        finding_sites=sites,
    )


def region_measurements(prefix: str, results: Mapping[str, Any]) -> list[hd.sr.Measurement]:
    """Volume, thickness and T2 measurements of one structure that results.json holds."""
    out = []
    volume = finite_float(results, f"{prefix}_ml")
    if volume is not None:
        out.append(_measurement(VOLUME, volume, "ml"))
    for stat in _STATS:
        value = finite_float(results, f"{prefix}_mm_{stat}")
        if value is not None:
            out.append(_measurement(THICKNESS, value, "mm", stat))
    for layer in (None, *_LAYERS):
        for stat in _STATS:
            value = _t2_value(results, prefix, layer, stat)
            if value is not None:
                out.append(_measurement(T2, value, "ms", stat, layer))
    return out


def t2_key(prefix: str, layer: str | None, stat: str) -> str:
    """results.json key of a T2 statistic: ``<region>[_deep|_superficial]_t2_ms_<stat>``."""
    return f"{prefix}_{layer}_t2_ms_{stat}" if layer else f"{prefix}_t2_ms_{stat}"


def _t2_value(
    results: Mapping[str, Any], prefix: str, layer: str | None, stat: str
) -> float | None:
    value = finite_float(results, t2_key(prefix, layer, stat))
    if value is None and layer:  # also accepted: <region>_t2_ms_<layer>_<stat>
        value = finite_float(results, f"{prefix}_t2_ms_{layer}_{stat}")
    return value


def shape_measurements(results: Mapping[str, Any]) -> list[hd.sr.Measurement]:
    """BScore and NSM fit quality, when the shape stage ran."""
    out = []
    for key in BSCORE_KEYS:
        value = finite_float(results, key)
        if value is not None:
            out.append(_measurement(BSCORE, value, "1"))
            break
    for key, code in (("nsm_assd_bone_mm", ASSD_BONE), ("nsm_assd_cart_mm", ASSD_CART)):
        value = finite_float(results, key)
        if value is not None:
            out.append(_measurement(code, value, "mm"))
    return out


def qc_evaluations(results: Mapping[str, Any]) -> list[hd.sr.QualitativeEvaluation] | None:
    """The QC outcome as a coded item, when the qc stage ran."""
    qc = results.get("qc")
    outcome = qc.get("outcome") if isinstance(qc, Mapping) else None
    if outcome not in QC_OUTCOMES:
        return None
    return [hd.sr.QualitativeEvaluation(name=QC, value=QC_OUTCOMES[str(outcome)])]


def _segments_by_key(seg: Dataset) -> dict[str, int]:
    """Tracking ID (results key prefix) -> segment number, read from the SEG itself."""
    out = {}
    for item in seg.SegmentSequence:
        out[str(item.get("TrackingID", ""))] = int(item.SegmentNumber)
    return out


def _groups(
    *,
    seg: Dataset,
    first: Dataset,
    results: Mapping[str, Any],
    info: AlgorithmInfo,
    side: str | None,
    images: Mapping[int, list[hd.sr.SourceImageForSegmentation]] | None = None,
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """One TID 1411 group per structure; with a change report each also carries its time point,
    the prior's values and the change (:mod:`sr_change`)."""
    algo = hd.sr.AlgorithmIdentification(name=info.name, version=info.version)
    change = compared(results)
    now = time_point(change, "current") if change else None
    numbers = _segments_by_key(seg)
    if "femur" not in numbers or "fem_cart" not in numbers:
        raise encode_error("the SEG lacks the femur or femoral cartilage segment")
    sites = [hd.sr.FindingSite(anatomic_location=_KNEE, laterality=_SIDE[side])] if side else None
    plan: list[tuple[str, list[hd.sr.Measurement]]] = [
        (key, region_measurements(key, results))
        for key, _ in (*TISSUES.values(), *SUBREGIONS.values())
    ]
    plan.append((SHAPE_GROUP, shape_measurements(results)))
    qc = qc_evaluations(results)
    groups = []
    for key, values in plan:
        if not values:
            continue
        nums, evals = change_items(key, change) if change else ([], [])
        number = numbers.get(key) or _fallback(key, numbers)
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=tracking_uid(first, side, key), identifier=key),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=SegmentationStorage,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=number,
                    source_images=images[number] if images else None,
                    source_series=None if images else hd.sr.SourceSeriesForSegmentation(
                        first.SeriesInstanceUID),
                ),
                time_point_context=now,
                algorithm_id=algo,
                finding_sites=sites,
                measurements=[*values, *nums],
                qualitative_evaluations=[*(qc or []), *evals] or None,
            )
        )
    return groups


def segment_source_images(
    seg: Dataset, datasets: Sequence[Dataset], labels: np.ndarray
) -> dict[int, list[hd.sr.SourceImageForSegmentation]]:
    """Segment number -> the source slices that contain it (at least the middle slice)."""
    values: dict[str, tuple[int, ...]] = {key: (label,) for label, (key, _) in TISSUES.items()}
    values.update({key: (label,) for label, (key, _) in SUBREGIONS.items()})
    values["fem_cart"] = (4, *SUBREGIONS)
    counts = slice_label_counts(check_label_map(labels, datasets))
    out = {}
    for key, number in _segments_by_key(seg).items():
        slices: list[int] = (
            np.flatnonzero(counts[:, list(values[key])].sum(axis=1)).tolist()
            if key in values
            else []
        )
        chosen = slices or [len(datasets) // 2]
        out[number] = [
            hd.sr.SourceImageForSegmentation(
                datasets[i].SOPClassUID,
                datasets[i].SOPInstanceUID,
                referenced_frame_numbers=_frames(datasets[i]),
            )
            for i in chosen
        ]
    return out


def _frames(ds: Dataset) -> list[int] | None:
    number = frame_number(ds)
    return [number] if number is not None else None


def _fallback(key: str, numbers: Mapping[str, int]) -> int:
    """Segment a group refers to when the SEG has no segment of its own for it."""
    if key == SHAPE_GROUP:
        return numbers["femur"]
    return numbers["fem_cart"]  # femoral subregions without subregion segments


def encode_sr(
    *,
    source: Sequence[Dataset | str | Path],
    seg: Dataset,
    results: Mapping[str, Any],
    model: Mapping[str, Any] | AlgorithmInfo,
    labels: np.ndarray | None = None,
    options: EncodeSettings | None = None,
) -> Dataset:
    """Encode results.json as a TID 1500 Comprehensive 3D SR referencing the SEG's segments.

    Parameters
    ----------
    source
        The source series (datasets or paths); evidence and Patient/Study come from it.
    seg
        The SEG from :func:`pipeline.encode.seg.encode_seg` (segments found by tracking ID).
    results
        results.json of the job (keys as in knee-pipeline-facts.md, ``<tissue>_ml``, ``side``,
        ``bscore``, ``nsm_assd_bone_mm``, ``nsm_assd_cart_mm`` from the shape stage).
    model
        Model card (``ModelCard.as_dict()``) or :class:`AlgorithmInfo`.
    labels
        The label map the SEG encodes; needed only with ``options.sr_source_images`` (to list
        the slices of each segment).
    options
        The ``encode`` settings.

    Returns
    -------
    pydicom.dataset.Dataset
        The SR instance (with file meta).
    """
    opts = options or EncodeSettings()
    info = AlgorithmInfo.from_card(model)
    if not isinstance(results, Mapping):
        raise encode_error(f"results must be a mapping, got {type(results).__name__}")
    if not isinstance(seg, Dataset) or seg.get("SOPClassUID") != SegmentationStorage:
        raise encode_error("seg must be a DICOM Segmentation dataset")
    datasets = load_source(source, pixels=False)
    if seg.StudyInstanceUID != datasets[0].StudyInstanceUID:
        raise encode_error("the SEG belongs to another study than the source series")
    side = knee_side(results)
    images = None
    if opts.sr_source_images:
        if labels is None:
            raise encode_error("encode.sr_source_images needs the label map")
        images = segment_source_images(seg, datasets, labels)
    groups = _groups(
        seg=seg,
        first=datasets[0],
        results=results,
        info=info,
        side=side,
        images=images,
    )
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=new_uid(opts.uid_prefix),
            name=info.name,
            manufacturer_name=opts.manufacturer,
            model_name=f"{info.name} {info.version}"[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        # instances the content references (a multi-frame source once)
        evidence=[seg, *unique_instances(datasets)] if images else [seg],
        content=report,
        series_instance_uid=new_uid(opts.uid_prefix),
        series_number=series_number(datasets[0], "sr", opts.series_number_base),
        sop_instance_uid=new_uid(opts.uid_prefix),
        instance_number=1,
        manufacturer=opts.manufacturer,
        is_complete=True,
        series_description=series_description(datasets[0], "sr", opts.description_prefix),
    )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "kneenode private codes (BScore, NSM fit quality, QC, change)"
    scheme.CodingSchemeResponsibleOrganization = "kneenode"
    sr.CodingSchemeIdentificationSequence = [scheme]
    return _plain(sr)


def _plain(sr: hd.sr.Comprehensive3DSR) -> Dataset:
    """A plain dataset of the SR whose content tree is pre-encoded (writes in ~30 ms, not ~0.5 s)."""
    ds = Dataset()
    for elem in sr:
        ds.add(elem)
    ds.file_meta = FileMetaDataset(sr.file_meta)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    freeze_sequence(ds, "ContentSequence")
    mark_explicit_little(ds)
    return ds


_STAT_BY_CODE = {code.value: stat for stat, code in _STATS.items()}
_LAYER_BY_CODE = {code.value: layer for layer, code in _LAYERS.items()}
_SIDE_BY_CODE = {code.value: side for side, code in _SIDE.items()}
_QC_BY_CODE = {code.value: outcome for outcome, code in QC_OUTCOMES.items()}


def read_sr_measurements(sr: Dataset) -> dict[str, Any]:
    """Read an SR written by :func:`encode_sr` back into results.json keys (and ``side``)."""
    doc = hd.sr.Comprehensive3DSR.from_dataset(sr)
    out: dict[str, Any] = {}
    for group in doc.content.get_volumetric_roi_measurement_groups():  # type: ignore[attr-defined]
        prefix = str(group.tracking_identifier)
        for site in group.finding_sites:
            if site.laterality is not None:
                out["side"] = _SIDE_BY_CODE[site.laterality.value]
        for m in measurements(group):
            if m.name.value not in CHANGE_CODES:  # the change: read_sr_change
                out[_key(prefix, m)] = float(m.value)
        for item in group.get_qualitative_evaluations():
            if item.name.value == QC.value:
                out["qc_outcome"] = _QC_BY_CODE[item.value.value]
    return out


def _key(prefix: str, m: hd.sr.Measurement) -> str:
    code = m.name.value
    stat = _STAT_BY_CODE.get(m.derivation.value) if m.derivation is not None else None
    if code == VOLUME.value:
        return f"{prefix}_ml"
    if code == THICKNESS.value:
        return f"{prefix}_mm_{stat}"
    if code == T2.value:
        layers = [
            _LAYER_BY_CODE[s.topographical_modifier.value]
            for s in m.finding_sites
            if s.topographical_modifier is not None
        ]
        return t2_key(prefix, layers[0] if layers else None, str(stat))
    by_code = {
        BSCORE.value: "bscore",
        ASSD_BONE.value: "nsm_assd_bone_mm",
        ASSD_CART.value: "nsm_assd_cart_mm",
    }
    if code in by_code:
        return by_code[code]
    raise encode_error(f"unknown measurement {m.name.meaning!r} in group {prefix}")

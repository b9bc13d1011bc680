"""Write a phantom as one Enhanced MR Image Storage object (all slices and echoes as frames).

Why: current Siemens (XA) and Philips scanners send Enhanced MR (1.2.840.10008.5.1.4.1.1.4.1) by
default, and the node must produce results for it (issue 13). The object carries what the IOD
requires and dciodvfy checks: the Enhanced MR Image, MR Pulse Sequence, Multi-frame Functional
Groups and Multi-frame Dimension modules, shared Pixel Measures, Plane Orientation, Frame Anatomy,
Pixel Value Transformation, Frame VOI LUT and the MR acquisition macros (frame type, timing, FOV,
modifiers, coils, averages, diffusion none), and per frame Frame Content, Plane Position and MR
Echo. Frames are echo-major (every slice of echo 1, then of echo 2) in slice order; the Dimension
Index is (Stack ID, In-Stack Position Number) for one echo and (Effective Echo Time, Stack ID,
In-Stack Position Number) for qDESS, so a reader can sort frames without looking at positions.

UIDs are those of the single-frame writer under their own ``enhanced/`` key: the same phantom
written both ways gives two distinct studies, never one series in two SOP classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian

from pipeline.phantom.dicom_writer import (
    GE_CREATOR,
    STUDY_TIME,
    _common,
    _file_meta,
    _set_pixels,
    _uid,
    to_stored,
)

if TYPE_CHECKING:
    from pipeline.phantom.build import Phantom

#: Attributes of the single-frame header that stay at the top level of an Enhanced MR object
#: (the rest moves into functional groups or has no place in the IOD).
_TOP_LEVEL = (
    "SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "PatientIdentityRemoved", "DeidentificationMethod", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber", "StudyDescription", "Modality",
    "SeriesNumber", "SeriesDate", "SeriesTime", "SeriesDescription", "ProtocolName",
    "BodyPartExamined", "PatientPosition", "PositionReferenceIndicator",
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber",
    "StationName", "AcquisitionNumber", "ContentDate", "ContentTime", "BurnedInAnnotation",
    "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns", "BitsAllocated",
    "BitsStored", "HighBit", "PixelRepresentation", "MagneticFieldStrength",
)
_KNEE = ("49076000", "SCT", "Knee joint")


def _item(**values: Any) -> Dataset:
    ds = Dataset()
    for key, value in values.items():
        setattr(ds, key, value)
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=value, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def _header(phantom: Phantom) -> Dataset:
    """Top-level attributes: Patient ... Equipment, Enhanced MR Image, MR Pulse Sequence."""
    common = _common(phantom)
    ds = _item(**{k: common[k] for k in _TOP_LEVEL})
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = _uid(phantom, "enhanced/sop")
    ds.StudyInstanceUID = _uid(phantom, "enhanced/study")
    ds.SeriesInstanceUID = _uid(phantom, "enhanced/series")
    ds.FrameOfReferenceUID = _uid(phantom, "enhanced/for")
    ds.InstanceNumber = 1
    ds.SeriesDescription = f"{common['SeriesDescription']} ENH"[:64]
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.AcquisitionDateTime = phantom.study_date + STUDY_TIME
    ds.AcquisitionDuration = 300.0
    ds.ContentQualification = "RESEARCH"
    ds.ResonantNucleus = "1H"
    ds.KSpaceFiltering = "NONE"
    ds.ApplicableSafetyStandardAgency = "IEC"
    ds.AcquisitionContrast = "T2"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.ComplexImageComponent = "MAGNITUDE"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.AcquisitionContextSequence = Sequence()
    ds.InstanceCreationDate, ds.InstanceCreationTime = phantom.study_date, STUDY_TIME
    # MR Pulse Sequence module (required for ORIGINAL images)
    ds.PulseSequenceName = "qdess3d" if phantom.qdess else "dess3d"
    ds.MRAcquisitionType = "3D"
    ds.EchoPulseSequence = "GRADIENT"
    ds.MultiPlanarExcitation = "NO"
    ds.PhaseContrast = "NO"
    ds.TimeOfFlightContrast = "NO"
    ds.SteadyStatePulseSequence = "FREE_PRECESSION"
    ds.EchoPlanarPulseSequence = "NO"
    ds.SaturationRecovery = "NO"
    ds.SpectrallySelectedSuppression = "WATER"
    ds.OversamplingPhase = "NONE"
    ds.GeometryOfKSpaceTraversal = "RECTILINEAR"
    ds.RectilinearPhaseEncodeReordering = "LINEAR"
    ds.SegmentedKSpaceTraversal = "SINGLE"
    ds.CoverageOfKSpace = "FULL"
    ds.NumberOfKSpaceTrajectories = 1
    if phantom.qdess:  # the GE gradient tags the analytic T2 formula reads (as GE writes them)
        qp = phantom.qdess_params
        block = ds.private_block(0x0019, GE_CREATOR, create=True)
        block.add_new(0xB6, "DS", f"{qp.gl_area:.6g}")
        block.add_new(0xB7, "DS", f"{qp.tg_us:.6g}")
    return ds


def _shared(phantom: Phantom) -> Dataset:
    """The Shared Functional Groups item: geometry and acquisition macros common to all frames."""
    g = phantom.grid
    common = _common(phantom)
    qp = phantom.qdess_params
    ni, nj, nk = g.size
    side = "R" if phantom.side == "right" else "L"
    anatomy = _item(AnatomicRegionSequence=Sequence([_code(*_KNEE)]), FrameLaterality=side)
    return _item(
        PixelMeasuresSequence=Sequence([_item(
            PixelSpacing=common["PixelSpacing"], SliceThickness=common["SliceThickness"],
            SpacingBetweenSlices=common["SpacingBetweenSlices"])]),
        PlaneOrientationSequence=Sequence([_item(
            ImageOrientationPatient=common["ImageOrientationPatient"])]),
        FrameAnatomySequence=Sequence([anatomy]),
        PixelValueTransformationSequence=Sequence([_item(
            RescaleIntercept="0", RescaleSlope="1", RescaleType="US")]),
        FrameVOILUTSequence=Sequence([_item(
            WindowCenter=common["WindowCenter"], WindowWidth=common["WindowWidth"])]),
        MRImageFrameTypeSequence=Sequence([_item(
            FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], PixelPresentation="MONOCHROME",
            VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE",
            ComplexImageComponent="MAGNITUDE",
            AcquisitionContrast="T2")]),
        MRTimingAndRelatedParametersSequence=Sequence([_item(
            RepetitionTime=f"{qp.tr_ms:.6g}", FlipAngle=f"{qp.flip_deg:.6g}",
            EchoTrainLength=2 if phantom.qdess else 1, RFEchoTrainLength=1,
            GradientEchoTrainLength=2 if phantom.qdess else 1,
            SpecificAbsorptionRateSequence=Sequence([_item(
                SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                SpecificAbsorptionRateValue=0.5)]),
            GradientOutputType="DB_DT", GradientOutput=20.0,
            OperatingModeSequence=Sequence([
                _item(OperatingModeType=kind, OperatingMode="IEC_NORMAL")
                for kind in ("STATIC FIELD", "RF", "GRADIENT")]))]),
        MRFOVGeometrySequence=Sequence([_item(
            InPlanePhaseEncodingDirection="ROW", MRAcquisitionFrequencyEncodingSteps=nj,
            MRAcquisitionPhaseEncodingStepsInPlane=ni,
            MRAcquisitionPhaseEncodingStepsOutOfPlane=nk, PercentSampling=100.0,
            PercentPhaseFieldOfView=100.0)]),
        MRModifierSequence=Sequence([_item(
            InversionRecovery="NO", FlowCompensation="NONE", Spoiling="NONE", T2Preparation="NO",
            SpectrallySelectedExcitation="WATER", SpatialPresaturation="NONE",
            PartialFourier="NO", ParallelAcquisition="NO")]),
        MRImagingModifierSequence=Sequence([_item(
            MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE",
            TransmitterFrequency=float(common["ImagingFrequency"]),
            PixelBandwidth=float(common["PixelBandwidth"]))]),
        MRReceiveCoilSequence=Sequence([_item(
            ReceiveCoilName=common["ReceiveCoilName"], ReceiveCoilManufacturerName="kneenode",
            ReceiveCoilType="MULTICOIL", QuadratureReceiveCoil="NO",
            MultiCoilDefinitionSequence=Sequence([_item(
                MultiCoilElementName="KNEE", MultiCoilElementUsed="YES")]))]),
        MRTransmitCoilSequence=Sequence([_item(
            TransmitCoilName="BODY", TransmitCoilManufacturerName="kneenode",
            TransmitCoilType="BODY")]),
        MRAveragesSequence=Sequence([_item(NumberOfAverages="1")]),
        MRDiffusionSequence=Sequence([_item(DiffusionBValue=0.0, DiffusionDirectionality="NONE")]),
        MRSpatialSaturationSequence=Sequence(),
    )


def _dimensions(ds: Dataset, phantom: Phantom) -> None:
    """Multi-frame Dimension module: (echo,) Stack ID, In-Stack Position Number."""
    org = _uid(phantom, "enhanced/dimension-organization")
    ds.DimensionOrganizationSequence = Sequence([_item(DimensionOrganizationUID=org)])
    pointers = [(0x00209056, 0x00209111, "Stack ID"), (0x00209057, 0x00209111, "In-Stack Position")]
    if phantom.qdess:
        pointers.insert(0, (0x00189082, 0x00189114, "Effective Echo Time"))
    ds.DimensionIndexSequence = Sequence([
        _item(DimensionOrganizationUID=org, DimensionIndexPointer=p, FunctionalGroupPointer=g,
              DimensionDescriptionLabel=label)
        for p, g, label in pointers
    ])
    if not phantom.qdess:
        ds.DimensionOrganizationType = "3D"


def _per_frame(phantom: Phantom) -> Sequence:
    """One Per-frame Functional Groups item per frame (echo-major, slice order)."""
    positions = phantom.grid.slice_positions()
    when = phantom.study_date + STUDY_TIME
    items = []
    for e, te in enumerate(phantom.echo_times_ms):
        for k, pos in enumerate(positions):
            index = [e + 1, 1, k + 1] if phantom.qdess else [1, k + 1]
            content = _item(
                FrameAcquisitionDateTime=when, FrameReferenceDateTime=when,
                FrameAcquisitionDuration=300000.0 / len(positions), StackID="1",
                InStackPositionNumber=k + 1, DimensionIndexValues=index,
                FrameAcquisitionNumber=1)
            items.append(_item(
                FrameContentSequence=Sequence([content]),
                PlanePositionSequence=Sequence([_item(
                    ImagePositionPatient=[f"{v:.6f}" for v in pos])]),
                MREchoSequence=Sequence([_item(EffectiveEchoTime=float(f"{te:.6g}"))]),
            ))
    return Sequence(items)


def write_enhanced_series(
    phantom: Phantom, folder: Path, *, transfer_syntax: str = ExplicitVRLittleEndian
) -> list[Path]:
    """Write the phantom's echoes as one Enhanced MR object ``MF00001.dcm``; returns its path.

    ``transfer_syntax`` as for :func:`pipeline.phantom.dicom_writer.write_dicom_series`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ds = _header(phantom)
    ds.SharedFunctionalGroupsSequence = Sequence([_shared(phantom)])
    ds.PerFrameFunctionalGroupsSequence = _per_frame(phantom)
    _dimensions(ds, phantom)
    frames = np.concatenate([to_stored(echo) for echo in phantom.echoes])
    ds.NumberOfFrames = len(frames)
    meta = _file_meta(ds.SOPInstanceUID)
    meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.file_meta = meta
    _set_pixels(ds, frames, transfer_syntax)
    path = folder / "MF00001.dcm"
    ds.save_as(path, enforce_file_format=True)
    return [path]

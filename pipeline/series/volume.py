"""Read a completed series (DICOM folder or file, NIfTI, NRRD) into a :class:`SeriesVolume`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import Dataset

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import ReaderSettings
from pipeline.series.frames import (
    GE_CREATOR,
    Frame,
    SliceRef,
    frames_of,
    invalid,
    load_pixels,
    lookup,
    private_value,
    read_header,
)
from pipeline.series.stack import (
    Stack,
    build_stack,
    check_common,
    check_echoes_match,
    group_by_echo,
    resample_uniform,
)

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
_SKIP_NAMES = {"DICOMDIR"}
_SKIP_SUFFIXES = (".json",)


@dataclass(frozen=True)
class SeriesVolume:
    """A 3-D input volume with what the later stages need.

    Attributes
    ----------
    image
        float32 SimpleITK image to segment: the root-sum-of-squares of the echoes for a multi-echo
        (qDESS) series, else the single echo. Geometry from ImagePositionPatient and
        ImageOrientationPatient, slices sorted along the normal (row x column).
    echoes, echo_times_ms
        One float32 image per echo (same geometry as ``image``), ascending echo time; the times are
        None for NIfTI/NRRD input or when the header has none.
    slices
        ``slices[e][k]``: the source instance (path, SOP Instance UID, frame) of slice ``k`` of echo
        ``e`` (empty for NIfTI/NRRD).
    header
        The first instance's header without pixel data (Patient, Study, Series, Equipment modules
        for the encoders); None for NIfTI/NRRD.
    acquisition
        Parameters T2 mapping needs: RepetitionTime, FlipAngle (and EchoTimes) in ms/degrees, the
        GE gradient tags ``gl_area`` (0019,10B6) and ``tg_us`` (0019,10B7) when present, plus
        Manufacturer and MagneticFieldStrength.
    warnings
        What the reader accepted but the operator should know (e.g. non-uniform slice spacing
        resampled onto a uniform grid: slice ``k`` of the volume is then interpolated between
        source slices ``k`` and a neighbour, off ``slices[e][k]`` by at most the gap tolerance).
    """

    image: sitk.Image
    echoes: tuple[sitk.Image, ...]
    echo_times_ms: tuple[float | None, ...]
    source: Path
    source_format: str  # "dicom", "dicom-multiframe", "nifti", "nrrd", "image"
    slices: tuple[tuple[SliceRef, ...], ...] = ()
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    sop_class_uid: str | None = None
    modality: str | None = None
    header: Dataset | None = None
    acquisition: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def is_multi_echo(self) -> bool:
        """True for a two-echo (qDESS) or other multi-echo series."""
        return len(self.echoes) > 1

    @property
    def source_sop_instance_uids(self) -> tuple[str, ...]:
        """SOP Instance UIDs of the first echo's slices in volume order (k = 0..n-1)."""
        return tuple(ref.sop_instance_uid for ref in self.slices[0]) if self.slices else ()


def read_series(
    path: str | Path | Sequence[str | Path], limits: ReaderSettings | None = None
) -> SeriesVolume:
    """Read a completed series folder, a single (multi-frame) DICOM file, a list of DICOM files,
    or a NIfTI/NRRD file.

    A folder is searched recursively; hidden files, ``DICOMDIR`` and ``*.json`` side-car files (the
    spool's own records) are skipped, any other non-DICOM file is an error.

    ``limits`` are the reader tolerances (the ``reader`` settings section; defaults when None).
    Slices a little off a uniform grid (within the tolerances) are resampled onto it and reported
    in ``warnings``.

    Raises
    ------
    NodeError
        FILE_NOT_FOUND when the path does not exist or holds no file; DICOM_ERROR for a file that
        is not DICOM or whose pixels cannot be decoded; INVALID_FORMAT (with the precise reason)
        for several series in one folder, mixed matrix sizes or orientations, 2-D or too small
        input, duplicate or missing slices, uneven spacing, or echoes that do not match.
    """
    limits = limits or ReaderSettings()
    if not isinstance(path, (str, Path)):
        files = [Path(f) for f in path]
        missing = [f for f in files if not f.is_file()]
        if not files or missing:
            raise NodeError(ErrorCode.FILE_NOT_FOUND, f"{len(missing)} of {len(files)} files are "
                            f"missing (e.g. {missing[0] if missing else 'none given'})")
        return _read_dicom(files[0].parent, files, limits)
    p = Path(path)
    if not p.exists():
        raise NodeError(ErrorCode.FILE_NOT_FOUND, f"{p} does not exist")
    if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES):
        return read_image_file(p, limits)
    files = [p] if p.is_file() else sorted(
        f for f in p.rglob("*")
        if f.is_file() and not f.name.startswith(".") and f.name not in _SKIP_NAMES
        and not f.name.lower().endswith(_SKIP_SUFFIXES)
    )
    if not files:
        raise NodeError(ErrorCode.FILE_NOT_FOUND, f"{p} holds no files")
    return _read_dicom(p, files, limits)


def _read_dicom(root: Path, files: list[Path], limits: ReaderSettings) -> SeriesVolume:
    headers: list[tuple[Path, Dataset]] = []
    seen: set[str] = set()
    for f in files:
        ds = read_header(f)
        uid = str(ds.get("SOPInstanceUID", f))
        if uid in seen:  # the same instance twice (a copy): one is enough
            continue
        seen.add(uid)
        headers.append((f, ds))
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in headers}
    if len(series) > 1:
        raise invalid(f"the folder holds {len(series)} series, not one: {sorted(series)[:4]}")
    frames: list[Frame] = [fr for f, ds in headers for fr in frames_of(f, ds)]
    check_common(frames, limits)
    stacks = [build_stack(g, limits) for g in group_by_echo(frames, limits)]
    check_echoes_match(stacks)
    datasets = dict(headers)
    arrays = [resample_uniform(load_pixels(s.frames, datasets), s) for s in stacks]
    echoes = tuple(_stack_image(s, a) for s, a in zip(stacks, arrays, strict=True))
    image = echoes[0] if len(echoes) == 1 else _image_like(_rss_array(arrays), echoes[0])
    del arrays
    first = _without_pixels(headers[0][1])
    multiframe = any(fr.ref.frame is not None for fr in frames)
    return SeriesVolume(
        image=image,
        echoes=echoes,
        echo_times_ms=tuple(s.echo_time for s in stacks),
        source=root,
        source_format="dicom-multiframe" if multiframe else "dicom",
        slices=tuple(tuple(fr.ref for fr in s.frames) for s in stacks),
        study_instance_uid=_str(first, "StudyInstanceUID"),
        series_instance_uid=_str(first, "SeriesInstanceUID"),
        frame_of_reference_uid=_str(first, "FrameOfReferenceUID"),
        sop_class_uid=_str(first, "SOPClassUID"),
        modality=_str(first, "Modality"),
        header=first,
        acquisition=_acquisition(first, stacks),
        # every echo samples the same positions (checked), so the first echo's warning says it all
        warnings=(stacks[0].warning,) if stacks[0].warning else (),
    )


def _str(ds: Dataset, keyword: str) -> str | None:
    v = ds.get(keyword)
    return str(v) if v not in (None, "") else None


def _num(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _acquisition(ds: Dataset, stacks: list[Stack]) -> dict[str, Any]:
    """Acquisition parameters for T2 mapping (top level or Enhanced functional groups)."""
    idx = 0 if "PerFrameFunctionalGroupsSequence" in ds else None
    return {
        "repetition_time_ms": _num(lookup(ds, "RepetitionTime", idx)),
        "flip_angle_deg": _num(lookup(ds, "FlipAngle", idx)),
        "echo_times_ms": [s.echo_time for s in stacks],
        "gl_area": _num(private_value(ds, 0x0019, GE_CREATOR, 0xB6)),
        "tg_us": _num(private_value(ds, 0x0019, GE_CREATOR, 0xB7)),
        "manufacturer": _str(ds, "Manufacturer"),
        "magnetic_field_strength_t": _num(ds.get("MagneticFieldStrength")),
    }


def _without_pixels(ds: Dataset) -> Dataset:
    """A copy of the header without pixel data (what encoders copy Patient/Study from).

    Values deferred at reading (large private elements) are loaded first, so the copy never needs
    the file again.
    """
    tags = [tag for tag in ds.keys() if tag < 0x7FE00000]  # noqa: SIM118 (iter yields elements)
    out = Dataset({tag: ds[tag] for tag in tags})  # ds[tag] converts raw and deferred values
    out.file_meta = ds.file_meta
    return out


def _stack_image(stack: Stack, arr: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetOrigin(stack.origin)
    img.SetSpacing(stack.spacing)
    img.SetDirection(stack.direction)
    return img


def _rss_array(arrays: list[np.ndarray]) -> np.ndarray:
    out = np.square(arrays[0])
    for a in arrays[1:]:
        out += np.square(a)
    return np.sqrt(out, out=out)


def _image_like(arr: np.ndarray, ref: sitk.Image) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    return img


def rss(echoes: tuple[sitk.Image, ...]) -> sitk.Image:
    """Root-sum-of-squares of the echoes (the single echo itself when there is one)."""
    if len(echoes) == 1:
        return echoes[0]
    return _image_like(_rss_array([sitk.GetArrayViewFromImage(e).astype(np.float32) for e in echoes]),
                       echoes[0])


def read_image_file(path: Path, limits: ReaderSettings | None = None) -> SeriesVolume:
    """A NIfTI / NRRD / MetaImage volume (SimpleITK) as a single-echo SeriesVolume."""
    limits = limits or ReaderSettings()
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise invalid(f"{path.name} cannot be read as an image ({str(exc).strip()[:200]})") from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise invalid(f"{path.name}: {img.GetNumberOfComponentsPerPixel()} components per pixel, "
                      "need a grey-level volume")
    size = img.GetSize()
    if img.GetDimension() == 4 and size[3] == 1:
        img = img[:, :, :, 0]
        size = img.GetSize()
    if img.GetDimension() != 3:
        raise invalid(f"{img.GetDimension()}-D input {tuple(size)}: need one 3-D volume")
    if size[2] == 1:
        raise invalid(f"2-D input: {path.name} has a single slice")
    if min(size[:2]) < limits.min_matrix:
        raise invalid(f"image too small: {size[0]}x{size[1]} pixels in-plane (need at least "
                      f"{limits.min_matrix}x{limits.min_matrix})")
    if size[2] < limits.min_slices:
        raise invalid(f"too few slices: {size[2]} (need at least {limits.min_slices})")
    img = sitk.Cast(img, sitk.sitkFloat32)
    name = path.name.lower()
    fmt = "nifti" if ".nii" in name else "nrrd" if name.endswith((".nrrd", ".nhdr")) else "image"
    return SeriesVolume(image=img, echoes=(img,), echo_times_ms=(None,), source=path, source_format=fmt)

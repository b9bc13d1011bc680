"""Output verification: every result object the settings ask for exists and re-reads.

The old worker checked its expected files before packaging; the node does the same before
delivery (stage ``verify``, between ``encode`` and ``deliver``), so a PACS never receives a
partial set: a SEG without its SR, or an overlay series with a slice missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydicom import dcmread

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import EncodeSettings

KINDS = ("seg", "sr", "overlay", "pdf")
#: What a re-read instance of each kind must carry (Modality or payload attribute).
_MODALITY = {"seg": "SEG", "sr": "SR", "pdf": "DOC"}
_PAYLOAD = {"seg": "PixelData", "sr": "ContentSequence", "overlay": "PixelData",
            "pdf": "EncapsulatedDocument"}


def expected_outputs(options: EncodeSettings, source_slices: int) -> dict[str, int]:
    """Kind -> expected count: one SEG, SR and PDF each when enabled; overlay frames = slices."""
    wanted = {"seg": options.seg, "sr": options.sr, "overlay": options.overlay, "pdf": options.pdf}
    return {k: (source_slices if k == "overlay" else 1) for k in KINDS if wanted[k]}


def verify_outputs(folder: Path, expected: Mapping[str, int], *, study_uid: str | None
                   ) -> dict[str, list[str]]:
    """Check ``folder/<kind>/*.dcm`` against ``expected`` (kind -> count) and re-read each file.

    The overlay count is of frames, summed over its instances (one per source slice today; a
    multi-frame overlay of an Enhanced MR source counts the same). Every instance must re-read
    with pydicom, carry its kind's payload, be named by its SOP Instance UID and belong to the
    source study; a kind the settings did not ask for is an error too (it would be delivered).

    Returns
    -------
    dict
        Kind -> file names (the manifest of what may be delivered).

    Raises
    ------
    NodeError
        OUTPUT_MISSING listing every problem (missing kinds, short counts, unreadable files).
    """
    folder = Path(folder)
    problems: list[str] = []
    manifest: dict[str, list[str]] = {}
    present = {p.name for p in folder.iterdir() if p.is_dir() and any(p.glob("*.dcm"))} \
        if folder.is_dir() else set()
    for kind in sorted(present - set(expected)):
        problems.append(f"{kind}: written but not asked for by the encode settings")
    for kind, count in expected.items():
        files = sorted((folder / kind).glob("*.dcm"))
        if not files:
            problems.append(f"{kind}: missing (encode.{kind} is on)")
            continue
        frames = 0
        for path in files:
            reason, n = _check(path, kind, study_uid)
            if reason:
                problems.append(f"{kind}/{path.name}: {reason}")
            frames += n
        got = frames if kind == "overlay" else len(files)
        if got != count:
            unit = "frames" if kind == "overlay" else "instances"
            problems.append(f"{kind}: {got} {unit}, expected {count}")
        manifest[kind] = [p.name for p in files]
    if problems:
        raise NodeError(ErrorCode.OUTPUT_MISSING, "; ".join(problems)[:1000])
    return manifest


def _check(path: Path, kind: str, study_uid: str | None) -> tuple[str, int]:
    """("" or why the file is not a deliverable instance of ``kind``, its frame count)."""
    try:
        ds = dcmread(path)
    except Exception as exc:  # noqa: BLE001 - any read failure is the finding
        return f"does not re-read ({type(exc).__name__}: {exc})"[:300], 0
    if _PAYLOAD[kind] not in ds:
        return f"has no {_PAYLOAD[kind]}", 0
    if kind in _MODALITY and ds.get("Modality") != _MODALITY[kind]:
        return f"Modality {ds.get('Modality')!r}, expected {_MODALITY[kind]}", 0
    if str(ds.get("SOPInstanceUID", "")) != path.stem:
        return "SOP Instance UID differs from its file name", 0
    if study_uid and str(ds.get("StudyInstanceUID", "")) != study_uid:
        return "not in the source study", 0
    return "", int(ds.get("NumberOfFrames", 1) or 1)

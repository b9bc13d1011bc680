"""A finished job's results as one zip download, and the report's pictures for the web console.

The zip (``kneenode-<job id>.zip``, every member under ``<job id>/``; docs/upload.md):

==============================  ============================================================
``labels.nii.gz``               the canonical label map (``segment/labels.nii.gz``)
``results.json``                the typed results (docs/results.md)
``results.csv``                 the research pipeline's columns, one row
``config.json``                 the job's configuration snapshot (profile, route, models)
``report.pdf``                  the PDF report (the document of the Encapsulated PDF)
``dicom/<kind>/<UID>.dcm``      the DICOM results: ``seg``, ``sr``, ``overlay``, ``pdf``
``images/<name>.png``           key-slice overlays and thickness maps (``images.json``: captions)
``meshes/<name>.ply``           shape-model meshes, when ``nsm.save_meshes`` wrote any
==============================  ============================================================

It is written as a stream (:func:`iter_bundle` yields it chunk by chunk, one file at a time,
never more than one chunk in memory), so a job of several hundred MB downloads without being
built first. Files the job does not have (no SEG with ``encode.seg = false``) are left out.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from kneenode.errors import ErrorCode, NodeError

_CHUNK = 1 << 20
_KINDS = ("seg", "sr", "overlay", "pdf")
_STORED = (".gz", ".png", ".pdf")  # compressed already


@dataclass(frozen=True)
class ResultImage:
    """One picture of the report: file ``name``, its ``path`` (PNG) and a ``caption``."""

    name: str
    path: Path
    caption: str


def result_images(job_dir: Path) -> list[ResultImage]:
    """The report's key-slice overlays and thickness maps of a job, in report order.

    The web layer calls ``result_images(Path(job["job_dir"]))`` and serves each ``path`` as
    ``image/png`` under its ``name`` with its ``caption``; empty before the encode stage ran
    (or with ``encode.report_images = false``).
    """
    from pipeline.encode.bundle import IMAGES, IMAGES_INDEX

    folder = Path(job_dir) / "encode" / IMAGES
    try:
        index = json.loads((folder / IMAGES_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    out = []
    for item in index:
        name = Path(str(item.get("name", ""))).name  # never a path out of the folder
        if name.endswith(".png") and (folder / name).is_file():
            out.append(ResultImage(name, folder / name, str(item.get("caption", ""))))
    return out


def bundle_name(job_dir: Path) -> str:
    """The download's file name: ``kneenode-<job id>.zip``."""
    return f"kneenode-{Path(job_dir).name}.zip"


def bundle_members(job_dir: Path) -> list[tuple[str, Path]]:
    """(name in the zip, file) of everything the bundle holds, in the documented order.

    Raises
    ------
    NodeError
        FILE_NOT_FOUND when the job has no ``results.json`` yet.
    """
    job_dir = Path(job_dir)
    if not (job_dir / "results.json").is_file():
        raise NodeError(ErrorCode.FILE_NOT_FOUND, f"job {job_dir.name} has no results yet",
                        hint="Download the results once the job is done.")
    top = job_dir.name
    members: list[tuple[str, Path]] = []
    for name, path in (("labels.nii.gz", job_dir / "segment" / "labels.nii.gz"),
                       ("results.json", job_dir / "results.json"),
                       ("results.csv", job_dir / "results.csv"),
                       ("config.json", job_dir / "config.json")):
        if path.is_file():
            members.append((f"{top}/{name}", path))
    encode = job_dir / "encode"
    for kind in _KINDS:
        members += [(f"{top}/dicom/{kind}/{p.name}", p)
                    for p in sorted((encode / kind).glob("*.dcm"))]
    members += [(f"{top}/images/{i.name}", i.path) for i in result_images(job_dir)]
    index = encode / "images" / "images.json"
    if index.is_file() and any(m[0].startswith(f"{top}/images/") for m in members):
        members.append((f"{top}/images/images.json", index))
    members += [(f"{top}/meshes/{p.name}", p) for p in sorted(job_dir.glob("*/*.ply"))]
    return members


class _Chunks(io.RawIOBase):
    """A write-only, unseekable stream that keeps what was written until it is drained."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._parts.append(bytes(data))
        return len(data)

    def drain(self) -> Iterator[bytes]:
        parts, self._parts = self._parts, []
        if parts:
            yield b"".join(parts)


def _pdf_document(path: Path) -> bytes:
    from pydicom import dcmread

    from pipeline.encode.pdf import pdf_document

    return pdf_document(dcmread(path))


def iter_bundle(job_dir: Path) -> Iterator[bytes]:
    """The results zip of a job, chunk by chunk (for a streaming HTTP response).

    The web layer returns ``StreamingResponse(iter_bundle(job_dir), media_type=
    "application/zip", headers={"Content-Disposition": f'attachment; filename="{bundle_name(
    job_dir)}"'})`` (after a ``bundle_members`` call, whose NodeError becomes a 404).
    """
    members = bundle_members(job_dir)
    top = Path(job_dir).name
    sink = _Chunks()
    # level 1: most of a job is the overlay series, whose flat colours deflate well anyway
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED, allowZip64=True,
                         compresslevel=1) as zf:
        for name, path in members:
            info = zipfile.ZipInfo.from_file(path, name)
            # a name (not the ZipInfo) takes the archive's method and level; stored members
            # (compressed already) go as a ZipInfo
            target: str | zipfile.ZipInfo = name
            if name.endswith(_STORED):
                info.compress_type = zipfile.ZIP_STORED
                target = info
            big = info.file_size > zipfile.ZIP64_LIMIT // 2
            with open(path, "rb") as src, zf.open(target, "w", force_zip64=big) as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    yield from sink.drain()
            yield from sink.drain()
            if name.startswith(f"{top}/dicom/pdf/"):
                zf.writestr(zipfile.ZipInfo(f"{top}/report.pdf", info.date_time),
                            _pdf_document(path))
                yield from sink.drain()
    yield from sink.drain()


def results_bundle(job_dir: Path, out: BinaryIO) -> None:
    """Write the results zip of a job to ``out`` (any writable binary stream, seekable or not).

    The web layer may call ``results_bundle(Path(job["job_dir"]), fh)`` into a file, or stream
    :func:`iter_bundle` directly. Raises NodeError FILE_NOT_FOUND before writing anything when
    the job has no results yet.
    """
    out.writelines(iter_bundle(job_dir))

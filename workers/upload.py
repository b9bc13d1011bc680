"""Uploaded series (web console, ``kneenode upload``) become jobs through the edge's own chain.

An upload is a zip of one DICOM series, the files of one series, or one NIfTI / NRRD /
MetaImage volume (converted to an MR series by :mod:`pipeline.series.convert`). Everything is
first received into a staging folder on the spool's filesystem (``spool/uploads/<id>/``) and
checked there: the upload's size while it is read (``upload.max_bytes``), each zip member's name
(no ``..``, no absolute path, no symbolic link), the inflated bytes counted while inflating
(``upload.max_unpacked_bytes``, ``upload.max_ratio``: zip headers are not trusted), the number of
files (``upload.max_members``), and every instance as a C-STORE is checked (Part 10 file,
decodable header, valid UIDs, ``scp.max_instance_bytes``, an image SOP class). The instances are
stored in the staging folder with :class:`scp.spool.Spool` (the layout the SCP writes: file
meta + the bytes as uploaded, ``source.json``, duplicates kept as ``superseded``) and closed with
:func:`scp.closing.close_version` (``closed_by = "upload"``). Only then is the version renamed
into ``spool/complete/<Study>/<Series>/v<N>/`` (one rename) and announced by
:meth:`scp.completion.CompletionMonitor.announce` to the job creator, which applies the chosen
profile (as ``reprocess --profile`` does) and records ``source: upload`` and the user. Any
refusal raises :class:`~kneenode.errors.NodeError` with its own code before the rename: the
staging folder is removed and neither the spool nor the job store has anything of it.

An upload holds one series: several series are refused (UPLOAD_MANY_SERIES), because one
upload is one user's choice of one series with one profile; whole studies go by C-STORE, where
each series becomes its own job and what is not a knee series is ignored with a reason.

While the version is renamed and announced, the upload holds a lock (``.importing``, flock) in
it, so a running edge's completion monitor leaves it alone; if the uploading process dies in
between, the lock is gone and the edge's monitor announces the version itself.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.uid import DeflatedExplicitVRLittleEndian

from kneenode.errors import ErrorCode, NodeError
from kneenode.fsio import fsync_dir, write_json_atomic
from kneenode.logs import get_logger
from kneenode.settings import DEFAULT_PROFILE, Settings
from scp.announce import OnComplete
from scp.closing import close_version
from scp.completion import CompletionMonitor
from scp.handlers import read_header
from scp.receive import dataset_offset, inflate
from scp.spool import IMPORTING, SeriesKey, Spool, hold_lock, is_valid_uid

log = get_logger(__name__)

UPLOAD = "upload"  #: ``closed_by`` of an uploaded version, ``source`` of its job
UPLOADS = "uploads"  #: staging folders under the spool root
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")
_CHUNK = 1 << 20
_RATIO_FLOOR = 1 << 20  # members inflating to less cannot be a bomb; small files compress well
_ARCHIVE_RATIO_FLOOR = 64 << 20  # ... nor can a whole archive (many small members) below this
_STAGING_LOCK = ".lock"
_FORM_OVERHEAD = 1 << 20  # multipart boundaries and form fields around the files
_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class UploadFile:
    """One uploaded file: its name as the client gave it and a readable binary stream.

    The web layer passes ``UploadFile(part.filename, part.file)`` for each file of the form;
    the CLI ``UploadFile(name, path=path)`` (opened only while it is copied).
    """

    name: str
    stream: BinaryIO | None = None
    path: Path | None = None

    @contextmanager
    def reader(self) -> Iterator[BinaryIO]:
        """The stream to copy from (the file at ``path``, opened for the copy)."""
        if self.stream is not None:
            yield self.stream
            return
        if self.path is None:
            raise ValueError(f"upload file {self.name!r} has neither a stream nor a path")
        with open(self.path, "rb") as fh:
            yield fh


@dataclass(frozen=True)
class UploadOutcome:
    """What an accepted upload became.

    ``job_id`` is empty when the series was stored but the hand-off failed (redis down): a
    running edge (``kneenode serve``) announces it later, as it does for a received series.
    """

    job_id: str
    series_uid: str
    study_uid: str
    version: int
    instances: int
    kind: str  # "dicom-zip", "dicom-files", "nifti", "nrrd", "image"
    profile: str
    user: str
    series_path: Path
    series_description: str = ""
    hand_off_error: str = ""


@dataclass
class _Staging:
    """The staging folder of one upload and the running counts of its checks."""

    root: Path
    settings: Settings
    spool: Spool
    received: int = 0  # bytes read from the client
    unpacked: int = 0  # bytes inflated from zip members
    files: list[str] = field(default_factory=list)

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def check_room(self) -> None:
        """UPLOAD_NO_SPACE once staging has brought the spool under its watermark (the SCP's
        instances must still find room), checked as the upload is written."""
        sp = self.settings.spool
        if not self.spool.has_room(sp.min_free_bytes, sp.min_free_percent):
            raise refuse(ErrorCode.UPLOAD_NO_SPACE, f"the spool ({self.spool.root}) fell below "
                         "its free-space watermark while the upload was stored")


def refuse(code: ErrorCode, message: str) -> NodeError:
    """The refusal of an upload (permanent: the same upload would be refused again)."""
    return NodeError(code, message, retryable=code == ErrorCode.UPLOAD_NO_SPACE)


def check_profile(settings: Settings, profile: str) -> str:
    """The profile name to record ("" = the route's); UNKNOWN_PROFILE for a name not configured."""
    if not profile or profile == DEFAULT_PROFILE or profile in settings.profiles:
        return profile
    have = ", ".join([DEFAULT_PROFILE, *settings.profiles])
    raise refuse(ErrorCode.UNKNOWN_PROFILE, f"no profile '{profile}' (have: {have})")


def check_declared_size(settings: Settings, content_length: int | None) -> None:
    """UPLOAD_TOO_LARGE for a request whose declared length is over ``upload.max_bytes``.

    The web layer calls it with the request's Content-Length before parsing the form, so an
    oversized upload is refused before the multipart parser spools it to disk (the limit is
    enforced again, on the bytes actually read, by :func:`import_upload`).
    """
    limit = settings.upload.max_bytes
    if content_length is not None and content_length > limit + _FORM_OVERHEAD:
        raise refuse(ErrorCode.UPLOAD_TOO_LARGE, f"the upload declares {content_length} bytes, "
                     f"more than upload.max_bytes = {limit}")


def profiles(settings: Settings) -> list[str]:
    """The profile names an uploader may choose (for the form's choice list)."""
    return [DEFAULT_PROFILE, *settings.profiles]


def import_upload(
    files: Sequence[UploadFile],
    *,
    settings: Settings,
    hand_off: OnComplete,
    profile: str = "",
    user: str = "",
    fields: dict[str, str] | None = None,
) -> UploadOutcome:
    """Check an upload, store it in the spool as one complete series, announce it as a job.

    The web layer calls ``import_upload([UploadFile(f.filename, f.file) ...], settings=...,
    hand_off=upload_hand_off(settings, redis_url), profile=form["profile"], user=login,
    fields={"PatientName": ..., "PatientID": ...})`` in a worker thread (it blocks for the
    whole check and copy) and shows ``error.code``, ``error.message`` and ``error.hint`` of a
    NodeError. ``fields`` (:data:`pipeline.series.convert.FIELDS`) are used only for a volume.

    Raises
    ------
    NodeError
        UNKNOWN_PROFILE, UPLOAD_TOO_LARGE, UPLOAD_UNSAFE_PATH, UPLOAD_BOMB,
        UPLOAD_TOO_MANY_FILES, UPLOAD_NOT_DICOM, UPLOAD_MANY_SERIES, UPLOAD_NO_SPACE,
        NOT_AN_IMAGE, INVALID_FORMAT (a volume the reader refuses). Nothing is kept.
    """
    profile = check_profile(settings, profile)
    spool = Spool(settings.spool_dir, fsync=settings.spool.fsync)
    if not files:
        raise refuse(ErrorCode.UPLOAD_NOT_DICOM, "the upload holds no file")
    if len(files) > settings.upload.max_members:
        raise refuse(ErrorCode.UPLOAD_TOO_MANY_FILES, f"{len(files)} files, more than "
                     f"upload.max_members = {settings.upload.max_members}")
    if not spool.has_room(settings.spool.min_free_bytes, settings.spool.min_free_percent):
        raise refuse(ErrorCode.UPLOAD_NO_SPACE, f"the spool ({spool.root}) is below its "
                     "free-space watermark")
    uploads = spool.root / UPLOADS
    uploads.mkdir(parents=True, exist_ok=True)
    sweep_staging(uploads)
    root = Path(tempfile.mkdtemp(prefix="upload-", dir=uploads))
    lock = hold_lock(root / _STAGING_LOCK)
    stage = _Staging(root, settings, spool)
    stage.tmp.mkdir()
    blog = log.bind(upload=root.name, user=user, profile=profile or DEFAULT_PROFILE)
    try:
        try:
            kind, staged = _receive(stage, files, fields or {})
            key, version_dir = _stage_series(stage, staged, kind, profile, user)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise refuse(ErrorCode.UPLOAD_NO_SPACE, f"disk full while storing the upload: "
                             f"{exc}") from exc
            raise
        outcome = _publish(spool, settings, hand_off, key, version_dir, kind, profile, user)
    except NodeError as exc:  # the message may name uploaded files: not logged
        blog.warning("upload refused", code=str(exc.code), files=len(files))
        raise
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if lock is not None:
            os.close(lock)
    blog.info("upload stored", job_id=outcome.job_id, series_uid=outcome.series_uid,
              version=outcome.version, instances=outcome.instances, kind=kind)
    return outcome


def sweep_staging(uploads: Path, grace_s: float = 60.0) -> list[str]:
    """Remove staging folders of uploads whose process died: their lock is free, and they are
    older than ``grace_s`` (a folder just made has not taken its lock yet)."""
    removed = []
    now = time.time()
    for folder in sorted(p for p in uploads.iterdir() if p.is_dir()):
        try:
            if now - folder.stat().st_mtime < grace_s:
                continue
            fd = hold_lock(folder / _STAGING_LOCK)
        except OSError:  # removed meanwhile by another sweep
            continue
        if fd is None:
            continue
        try:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
        finally:
            os.close(fd)
    if removed:
        log.warning("removed staging folders of uploads that ended unfinished", count=len(removed))
    return removed


# -- receiving -----------------------------------------------------------------------------------

def _copy(stage: _Staging, upload: UploadFile, target: Path, name: str) -> None:
    """Copy one uploaded stream, counting towards ``upload.max_bytes`` while reading."""
    limit = stage.settings.upload.max_bytes
    with upload.reader() as stream, open(target, "wb") as out:
        while True:
            chunk = stream.read(_CHUNK)
            if not chunk:
                break
            stage.received += len(chunk)
            if stage.received > limit:
                raise refuse(ErrorCode.UPLOAD_TOO_LARGE, f"the upload is larger than "
                             f"upload.max_bytes = {limit} bytes (at {name})")
            stage.check_room()
            out.write(chunk)


def _is_zip(path: Path) -> bool:
    """A zip by its first bytes (a local file header, or an empty archive's end record); not
    :func:`zipfile.is_zipfile`, which finds an end record anywhere near the end, as pixel data
    may happen to hold."""
    with open(path, "rb") as fh:
        return fh.read(4) in (b"PK\x03\x04", b"PK\x05\x06")


def _is_volume(name: str) -> bool:
    return name.lower().endswith(VOLUME_SUFFIXES)


def _receive(stage: _Staging, files: Sequence[UploadFile], fields: dict[str, str]
             ) -> tuple[str, list[tuple[str, Path]]]:
    """The upload's kind and its candidate instance files (member name, staged path)."""
    names = [Path(f.name or "upload").name for f in files]
    stage.files = names[:50]
    if len(files) == 1 and _is_volume(names[0]):
        target = stage.root / ("volume-" + re.sub(r"[^A-Za-z0-9._-]", "_", names[0]))
        _copy(stage, files[0], target, names[0])
        return _convert(stage, target, names[0], fields)
    paths = []
    for i, (f, name) in enumerate(zip(files, names, strict=True)):
        if len(files) > 1 and _skipped(f.name or ""):  # a folder's .DS_Store, DICOMDIR
            continue
        target = stage.tmp / f"file-{i:06d}"
        _copy(stage, f, target, name)
        paths.append((name, target))
    if len(paths) == 1 and _is_zip(paths[0][1]):
        return "dicom-zip", _unzip(stage, paths[0][1], names[0])
    for name, path in paths:
        if _is_zip(path) or _is_volume(name):
            raise refuse(ErrorCode.UPLOAD_NOT_DICOM, f"{name}: a zip or a volume must be "
                         "uploaded alone, not among other files")
    return "dicom-files", paths


def _convert(stage: _Staging, volume: Path, name: str, fields: dict[str, str]
             ) -> tuple[str, list[tuple[str, Path]]]:
    from pipeline.series.convert import volume_to_dicom

    given = {"PatientName": stage.settings.upload.default_patient_name,
             "BodyPartExamined": stage.settings.upload.default_body_part,
             **{k: v for k, v in fields.items() if v}}
    written = volume_to_dicom(volume, stage.root / "converted", given,
                              limits=stage.settings.reader, name=name)
    lower = name.lower()
    kind = "nifti" if ".nii" in lower else "nrrd" if lower.endswith(".nrrd") else "image"
    return kind, [(p.name, p) for p in written]


def unsafe_member(info: zipfile.ZipInfo) -> str:
    """Why a zip member must not be unpacked ("" when it is safe): ``..`` components, an
    absolute or drive path, a symbolic link (Unix mode in the external attributes)."""
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return f"absolute path {name!r}"
    if ".." in parts:
        return f"path leaving the folder {name!r}"
    if stat.S_ISLNK(info.external_attr >> 16):
        return f"symbolic link {name!r}"
    return ""


def _skipped(name: str) -> bool:
    """Members that are not part of a series: folders, hidden files, macOS forks, DICOMDIR."""
    parts = [p for p in name.replace("\\", "/").split("/") if p and p != "."]
    return (name.endswith(("/", "\\")) or not parts or parts[-1].upper() == "DICOMDIR"
            or any(p.startswith(".") or p == "__MACOSX" for p in parts))


def _unzip(stage: _Staging, archive: Path, name: str) -> list[tuple[str, Path]]:
    """Inflate every member, checking names first and sizes and ratios while inflating."""
    up = stage.settings.upload
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise refuse(ErrorCode.UPLOAD_NOT_DICOM, f"{name}: not a readable zip ({exc})") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > up.max_members:
            raise refuse(ErrorCode.UPLOAD_TOO_MANY_FILES, f"{name} has {len(infos)} members, "
                         f"more than upload.max_members = {up.max_members}")
        for info in infos:
            why = unsafe_member(info)
            if why:
                raise refuse(ErrorCode.UPLOAD_UNSAFE_PATH, f"{name}: {why}")
        out = []
        for info in infos:
            if _skipped(info.filename):
                continue
            target = stage.tmp / f"member-{len(out):06d}"
            _inflate_member(stage, zf, info, target, name)
            out.append((info.filename, target))
        return out


def _inflate_member(stage: _Staging, zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                    name: str) -> None:
    """Inflate one member, counting its real bytes (the header's sizes are not trusted)."""
    up, instance_limit = stage.settings.upload, stage.settings.scp.max_instance_bytes
    member, size = info.filename, 0
    # the header's compressed size is capped by the archive's real size: a member claiming more
    # compressed bytes than the upload has cannot hide a high ratio behind it
    compressed = max(min(int(info.compress_size), stage.received), 1)
    try:
        with zf.open(info) as src, open(target, "wb") as out:
            while True:
                chunk = src.read(_CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                stage.unpacked += len(chunk)
                if size > _RATIO_FLOOR and size / compressed > up.max_ratio:
                    raise refuse(ErrorCode.UPLOAD_BOMB, f"{name}: member {member!r} inflates "
                                 f"more than {up.max_ratio:g} times its {compressed} compressed "
                                 "bytes (upload.max_ratio)")
                if stage.unpacked > _ARCHIVE_RATIO_FLOOR and \
                        stage.unpacked / max(stage.received, 1) > up.max_ratio:
                    raise refuse(ErrorCode.UPLOAD_BOMB, f"{name} inflates more than "
                                 f"{up.max_ratio:g} times its {stage.received} bytes "
                                 "(upload.max_ratio, all members together)")
                if stage.unpacked > up.max_unpacked_bytes:
                    raise refuse(ErrorCode.UPLOAD_BOMB, f"{name} inflates to more than "
                                 f"upload.max_unpacked_bytes = {up.max_unpacked_bytes} bytes")
                if size > instance_limit:
                    raise refuse(ErrorCode.UPLOAD_TOO_LARGE, f"{name}: member {member!r} is "
                                 f"larger than scp.max_instance_bytes = {instance_limit}")
                stage.check_room()
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as exc:
        raise refuse(ErrorCode.UPLOAD_NOT_DICOM, f"{name}: member {member!r} is damaged "
                     f"({exc})") from exc
    except (RuntimeError, NotImplementedError) as exc:  # encrypted, unknown compression
        raise refuse(ErrorCode.UPLOAD_NOT_DICOM, f"{name}: member {member!r} cannot be "
                     f"unpacked ({exc})") from exc


# -- instances -----------------------------------------------------------------------------------

def check_instance(path: Path, name: str, settings: Settings) -> Any:
    """The header of one uploaded instance, checked as a C-STORE'd one is (UPLOAD_NOT_DICOM or
    UPLOAD_TOO_LARGE naming the file otherwise)."""
    limit = settings.scp.max_instance_bytes
    size = path.stat().st_size
    if size > limit:
        raise refuse(ErrorCode.UPLOAD_TOO_LARGE, f"{name} is larger than "
                     f"scp.max_instance_bytes = {limit}")
    try:
        offset = dataset_offset(path)
    except ValueError:
        raise refuse(ErrorCode.UPLOAD_NOT_DICOM, f"{name}: not a DICOM file (no DICM preamble "
                     "and file meta)") from None
    header, problem = read_header(path)
    if header is None:
        raise refuse(ErrorCode.UPLOAD_NOT_DICOM, f"{name}: the DICOM header cannot be decoded "
                     f"({problem[:200]})")
    ts = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "") or "")
    if ts == DeflatedExplicitVRLittleEndian:
        try:
            inflated, _ = inflate(path, offset, limit)
        except (zlib.error, OSError) as exc:
            raise refuse(ErrorCode.UPLOAD_NOT_DICOM, f"{name}: damaged deflated data set "
                         f"({exc})") from exc
        if inflated > limit:
            raise refuse(ErrorCode.UPLOAD_TOO_LARGE, f"{name} inflates past "
                         f"scp.max_instance_bytes = {limit}")
    for tag in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(getattr(header, tag, "") or "")
        if not is_valid_uid(value):
            raise refuse(ErrorCode.UPLOAD_NOT_DICOM, f"{name}: {tag} missing or malformed: "
                         f"{value[:70]!r}")
    return header


def _stage_series(stage: _Staging, staged: list[tuple[str, Path]], kind: str, profile: str,
                  user: str) -> tuple[SeriesKey, Path]:
    """Check every instance, store them with the spool's own code, close the one series."""
    from pipeline.series.kinds import refuse_non_images

    if not staged:
        raise refuse(ErrorCode.UPLOAD_NOT_DICOM, "the upload holds no DICOM file")
    spool = Spool(stage.root / "spool", fsync=stage.settings.spool.fsync)
    source = {"calling_ae": "", "called_ae": "", "address": "",
              "upload": {"user": user, "profile": profile, "kind": kind, "files": stage.files,
                         "uploaded": time.time(), "bytes": stage.received}}
    classes: set[str] = set()
    series: Counter[SeriesKey] = Counter()
    for name, path in staged:
        header = check_instance(path, name, stage.settings)
        key = SeriesKey(str(header.StudyInstanceUID), str(header.SeriesInstanceUID))
        classes.add(str(getattr(header, "SOPClassUID", "") or ""))
        series[key] += 1
        spool.store(key, str(header.SOPInstanceUID), path, source)
    if len(series) > 1:
        listed = "; ".join(f"{k.series_uid} ({n} files)" for k, n in series.most_common(5))
        raise refuse(ErrorCode.UPLOAD_MANY_SERIES, f"the upload holds {len(series)} series, "
                     f"not one: {listed}")
    refuse_non_images(classes)
    (key,) = series
    with spool.locked(key):
        _, version_dir = close_version(spool, key, UPLOAD, user=user, files=len(staged))
    return key, version_dir


def _publish(spool: Spool, settings: Settings, hand_off: OnComplete, key: SeriesKey,
             staged: Path, kind: str, profile: str, user: str) -> UploadOutcome:
    """Rename the checked version into ``complete/`` (the next free version) and announce it."""
    previous = spool.versions(key)
    source_path = staged / "source.json"
    source = _read(source_path)
    source["previous_version"] = previous[-1] if previous else None
    write_json_atomic(source_path, source)
    lock = hold_lock(staged / IMPORTING)
    dest: Path | None = None
    try:
        dest = _rename_into(spool, key, staged)
        job_id, error = "", ""
        try:
            summary = CompletionMonitor(spool, settings, hand_off).announce(dest).summary
            job_id = _job_id(dest)
        except Exception as exc:  # noqa: BLE001 - stored; the edge announces it later
            error = f"{type(exc).__name__}: {exc}"[:300]
            log.error("uploaded series stored, hand-off failed; the edge announces it later",
                      series_uid=key.series_uid, error=error)
            summary = _read(dest / "summary.json")
    finally:
        if dest is not None:
            (dest / IMPORTING).unlink(missing_ok=True)
        if lock is not None:
            os.close(lock)
    return UploadOutcome(
        job_id=job_id, series_uid=key.series_uid, study_uid=key.study_uid,
        version=int(dest.name[1:]), instances=len(list(dest.glob("*.dcm"))), kind=kind,
        profile=profile or DEFAULT_PROFILE, user=user, series_path=dest,
        series_description=str(summary.get("series_description") or ""), hand_off_error=error)


def _rename_into(spool: Spool, key: SeriesKey, staged: Path) -> Path:
    """One rename into the next free version folder (another writer may take a number first)."""
    parent = spool.versions_dir(key)
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        dest = parent / f"v{(spool.versions(key) or [0])[-1] + 1}"
        try:
            os.rename(staged, dest)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                continue
            raise
        fsync_dir(parent)
        fsync_dir(parent.parent)
        return dest
    raise refuse(ErrorCode.UPLOAD_NO_SPACE, f"no free version folder for series "
                 f"{key.series_uid}")


def _read(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def _job_id(version_dir: Path) -> str:
    return str(_read(version_dir / "announced").get("job_id") or "")


def upload_hand_off(settings: Settings, redis_url: str) -> OnComplete:
    """The job creator an upload hands its series to (the edge's, over the node's redis)."""
    from workers.broker import make_broker, make_client
    from workers.intake import make_on_complete
    from workers.jobconfig import startup_stages
    from workers.jobstate import JobStore

    store = JobStore(make_client(redis_url, retry_s=settings.jobs.redis_retry_s),
                     settings.jobs.namespace)
    return make_on_complete(settings, store, make_broker(redis_url, settings.jobs),
                            startup_stages(settings))


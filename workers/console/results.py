"""The results page's files over :mod:`workers.bundle`: the result images, the zip, the PDF."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kneenode.errors import NodeError
from workers.bundle import ResultImage, bundle_members, bundle_name, iter_bundle, result_images


def job_dir(job: dict[str, Any]) -> Path | None:
    """The job's folder, None when it has none (ignored early, purged)."""
    folder = Path(str(job.get("job_dir") or ""))
    return folder if job.get("job_dir") and folder.is_dir() else None


def images(job: dict[str, Any]) -> list[ResultImage]:
    """The job's result images (key-slice overlays, thickness maps), in the report's order."""
    folder = job_dir(job)
    return result_images(folder) if folder is not None else []


def zip_stream(job: dict[str, Any]) -> tuple[str, Iterator[bytes]] | None:
    """The zip's file name and its bytes as a stream, None when the job has no results yet."""
    folder = job_dir(job)
    if folder is None:
        return None
    try:
        bundle_members(folder)  # refuses (FILE_NOT_FOUND) before anything is written
    except NodeError:
        return None
    return bundle_name(folder), iter_bundle(folder)

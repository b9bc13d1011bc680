"""The results page's files over :mod:`workers.bundle`: the result images and the zip."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import IO, Any


def _job_dir(job: dict[str, Any]) -> Path | None:
    folder = Path(str(job.get("job_dir") or ""))
    return folder if job.get("job_dir") and folder.is_dir() else None


def images(job: dict[str, Any]) -> list[Any]:
    """The job's result images (key-slice overlays, thickness maps), in the order to show."""
    from workers.bundle import result_images

    folder = _job_dir(job)
    return result_images(folder) if folder is not None else []


def zip_file(job: dict[str, Any]) -> IO[bytes]:
    """The results zip of the job in a temporary file (memory up to 16 MB, then disk)."""
    from workers.bundle import results_bundle

    folder = _job_dir(job)
    if folder is None:
        raise FileNotFoundError(f"job {job['id']} has no folder")
    out = tempfile.SpooledTemporaryFile(max_size=16 << 20)  # noqa: SIM115 (the caller closes it)
    try:
        results_bundle(folder, out)  # type: ignore[arg-type]
    except BaseException:
        out.close()
        raise
    return out  # type: ignore[return-value]

"""Series reader: a completed series (DICOM folder/file, NIfTI, NRRD) -> a checked 3-D volume.

Public API::

    from pipeline.series import read_series, reorient
    vol = read_series("spool/incoming/<study>/<series>/")   # SeriesVolume
    model_img, plan = reorient(vol.image, "LPS")              # or a reference image
    labels_on_source = plan.undo(labels_in_model_orientation)

Tolerances come from the ``reader`` settings section (``kneenode.settings.ReaderSettings``),
passed as ``read_series(path, limits=settings.reader)``. See docs/series.md for the rules,
warnings and error messages.
"""

from pipeline.series.frames import Frame, SliceRef
from pipeline.series.reorient import (
    Reorientation,
    code_matrix,
    orientation_code,
    plan_reorientation,
    reorient,
)
from pipeline.series.volume import SeriesVolume, read_image_file, read_series, rss

__all__ = [
    "Frame",
    "Reorientation",
    "SeriesVolume",
    "SliceRef",
    "code_matrix",
    "orientation_code",
    "plan_reorientation",
    "read_image_file",
    "read_series",
    "reorient",
    "rss",
]

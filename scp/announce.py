"""What the edge hands to the jobs layer when a series is complete.

The completion monitor calls one function, ``on_complete(series: CompletedSeries)``, supplied by
whoever composes the node (``kneenode serve`` passes the jobs layer's job creator). The function
must be idempotent: after a crash a version may be announced again until its ``announced`` marker
is written. If it raises, the series stays complete on disk and is announced again later.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class CompletedSeries:
    """One complete, immutable version of a received series.

    Attributes
    ----------
    study_uid, series_uid
        The DICOM UIDs of the series.
    version
        1 for the first completion; late arrivals after completion form version 2, 3, ...
    path
        Folder holding the version's ``*.dcm`` files and ``summary.json``
        (``spool/complete/<Study>/<Series>/v<N>``).
    summary
        The contents of ``summary.json``: modality, descriptions, instance count, SOP classes,
        calling AE, geometry sanity, ``previous_version`` (path or None) ...
    """

    study_uid: str
    series_uid: str
    version: int
    path: Path
    summary: dict[str, Any]

    @property
    def calling_ae(self) -> str:
        """The AE title that sent the series (for per-AE rules and 'send back to sender')."""
        return str(self.summary.get("calling_ae", ""))


OnComplete = Callable[[CompletedSeries], None]

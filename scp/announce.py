"""What the edge hands to the jobs layer when a series is complete.

The completion monitor calls one function, ``on_complete(series: CompletedSeries)``, supplied by
whoever composes the node (``kneenode serve`` passes the jobs layer's job creator). The function
must be idempotent: after a crash a version may be announced again until its ``announced`` marker
is written. If it raises, the series stays complete on disk and is announced again later. It
returns only once the job is durably recorded, and may return that job's id: the monitor keeps it
in the ``announced`` marker. A hand-off that also has a ``missing(keys)`` method (``keys``: a list
of ``(series_uid, version)``; returns the subset it has no job for) lets the monitor's
reconciliation find versions whose job was lost and announce them again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


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


OnComplete = Callable[[CompletedSeries], object]


@runtime_checkable
class Reconcilable(Protocol):
    """A hand-off that can say which recorded versions it has no job for."""

    def missing(self, keys: list[tuple[str, int]]) -> set[tuple[str, int]]: ...


def missing_hand_offs(on_complete: OnComplete, keys: list[tuple[str, int]]) -> set[tuple[str, int]]:
    """The versions among ``keys`` whose job the hand-off no longer knows (none if it cannot say)."""
    if not keys or not isinstance(on_complete, Reconcilable):
        return set()
    return set(on_complete.missing(keys))

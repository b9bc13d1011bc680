"""Failure policy of a stage attempt: what an exception means, and when to try again.

Pure functions: :func:`classify` turns any exception into a NodeError (code, message, hint,
retryable), :func:`retry_policy` says how often and how far apart a stage is retried (the job's
own settings), :func:`backoff_s` gives the delay of one retry.
"""

from __future__ import annotations

import random

from dramatiq.middleware import TimeLimitExceeded

from kneenode.errors import ErrorCode, NodeError
from kneenode.settings import Settings


def classify(exc: BaseException, stage: str, limit_s: float) -> NodeError:
    """Turn any exception of a stage into a NodeError (code, message, hint, retryable)."""
    if isinstance(exc, NodeError):
        return exc
    if isinstance(exc, TimeLimitExceeded):
        return NodeError(
            ErrorCode.TIMEOUT, f"stage '{stage}' exceeded its time limit of {limit_s:g} s",
            retryable=False,
        )
    text = f"{type(exc).__name__}: {exc}"
    if type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc):
        return NodeError(ErrorCode.GPU_OOM, f"stage '{stage}': {text}"[:500])
    if isinstance(exc, FileNotFoundError):
        return NodeError(ErrorCode.FILE_NOT_FOUND, f"stage '{stage}': {text}"[:500])
    return NodeError(ErrorCode.PIPELINE_ERROR, f"stage '{stage}': {text}"[:500])


def backoff_s(attempt: int, min_s: float, max_s: float) -> float:
    """Exponential backoff with +-20 % jitter: min, 2*min, 4*min ... capped at max."""
    base = min(max_s, min_s * 2 ** max(0, attempt - 1))
    return base * random.uniform(0.8, 1.2)


def retry_policy(settings: Settings, stage: str) -> tuple[int, float, float]:
    """(retries, first delay, longest delay) of a stage: ``delivery`` settings for ``deliver``
    (a PACS may be down for an hour), ``jobs`` settings for every other stage."""
    if stage == "deliver":
        d = settings.delivery
        return d.max_attempts - 1, d.backoff_min_s, d.backoff_max_s
    j = settings.jobs
    return j.max_retries, j.retry_min_backoff_s, j.retry_max_backoff_s

"""Results history: every finished job's measurements per patient pseudonym (docs/history.md).

The API the rest of the node uses:

* :func:`open_history` ``(settings) -> HistoryStore`` (creates / migrates the database);
* :func:`pseudonym` ``(secret, patient_id, issuer) -> str`` (HMAC-SHA256, no names stored);
* :class:`HistoryStore`: ``record(exam)``, ``exams(pseudonym, side, model=None)``,
  ``latest_prior(pseudonym, side, model, before)``, ``get(job_id)``, ``all_exams()``;
* :class:`ExamRecord` and :func:`model_key` (the identity two exams must share to be compared).

It lives in ``kneenode`` (not ``workers``) because the CLI, the workers' ``history`` stage and
the pipeline's change computation all read it, and pipeline must not import workers.
"""

from kneenode.history.header import PatientHeader, read_patient_header
from kneenode.history.pseudonym import load_secret, pseudonym
from kneenode.history.record import ExamRecord, measurement_keys, model_checksum, model_key
from kneenode.history.store import HistoryStore, database_url, open_history

__all__ = [
           "ExamRecord",
           "HistoryStore",
           "PatientHeader",
           "database_url",
           "load_secret",
           "measurement_keys",
           "model_checksum",
           "model_key",
           "open_history",
           "pseudonym",
           "read_patient_header",
]

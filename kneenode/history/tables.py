"""The history's tables (SQLAlchemy Core), as the newest migration leaves them.

The schema is owned by the alembic migrations in ``migrations/versions/``; these table objects
are only how the store reads and writes. A change to them needs a new migration (a test compares
a migrated database with this metadata).
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

exams = sa.Table(
    "exams", metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("study_uid", sa.String(64), nullable=False),
    sa.Column("series_uid", sa.String(64), nullable=False),
    sa.Column("series_version", sa.Integer, nullable=False),
    sa.Column("pseudonym", sa.String(64), nullable=False),
    sa.Column("side", sa.String(8)),
    sa.Column("laterality", sa.String(2)),
    sa.Column("study_date", sa.Date),
    sa.Column("acquisition_date", sa.Date),
    sa.Column("profile", sa.String(64), nullable=False),
    sa.Column("model_name", sa.String(128), nullable=False),
    sa.Column("model_version", sa.String(128), nullable=False),
    sa.Column("model_checksum", sa.String(64), nullable=False),
    sa.Column("model_key", sa.String(300), nullable=False),
    sa.Column("qc_outcome", sa.String(8)),
    sa.Column("qc_decision", sa.String(16)),
    sa.Column("results_schema", sa.Integer, nullable=False),
    sa.Column("results", sa.JSON, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("superseded_by", sa.String(64)),
    sa.Index("ix_exams_patient_side", "pseudonym", "side"),
    sa.Index("ix_exams_series_model", "series_uid", "model_key"),
)

measurements = sa.Table(
    "measurements", metadata,
    sa.Column("job_id", sa.String(64), sa.ForeignKey("exams.job_id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("key", sa.String(80), primary_key=True),
    sa.Column("value", sa.Float, nullable=False),
    sa.Index("ix_measurements_key", "key"),
)

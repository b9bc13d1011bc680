"""exams: one row per recorded job, the results.json document and the columns queries need.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exams",
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
    )
    op.create_index("ix_exams_patient_side", "exams", ["pseudonym", "side"])
    op.create_index("ix_exams_series_model", "exams", ["series_uid", "model_key"])


def downgrade() -> None:
    op.drop_table("exams")

"""measurements: one row per exam and flat measurement key, backfilled from the documents.

Lets SQL select exams by a measurement (``key = 'med_wb_fem_cart_mm_mean'``) the same way on
SQLite and PostgreSQL, without JSON functions that differ between the two.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import json
import math

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "measurements",
        sa.Column("job_id", sa.String(64), sa.ForeignKey("exams.job_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("key", sa.String(80), primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_index("ix_measurements_key", "measurements", ["key"])
    from kneenode.history.record import measurement_keys  # the keys as of this revision's code

    bind = op.get_bind()
    exams = sa.table("exams", sa.column("job_id", sa.String), sa.column("results", sa.JSON))
    rows = []
    for job_id, results in bind.execute(sa.select(exams.c.job_id, exams.c.results)):
        doc = json.loads(results) if isinstance(results, str) else results
        for key in measurement_keys():
            value = doc.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                rows.append({"job_id": job_id, "key": key, "value": float(value)})
    if rows:
        measurements = sa.table("measurements", sa.column("job_id", sa.String),
                                sa.column("key", sa.String), sa.column("value", sa.Float))
        bind.execute(measurements.insert(), rows)


def downgrade() -> None:
    op.drop_table("measurements")

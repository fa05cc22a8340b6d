"""The job change feed and progress history: `jobs.updated_at` (indexed) and `job_progress_samples`.

`updated_at` is when a job's row last changed, set by every store write; the change feed (`scheduler.changes`)
polls its index to find what changed. Jobs from before get the latest of their own times
(`coalesce(finished_at, started_at, created_at)`). `job_progress_samples` keeps the counters of the progress
reports over time (the rows/s chart); jobs from before have no samples.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE jobs SET updated_at = coalesce(finished_at, started_at, created_at)")
    with op.batch_alter_table("jobs") as batch:
        batch.alter_column("updated_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch.create_index(op.f("ix_jobs_updated_at_id"), ["updated_at", "id"])
    op.create_table(
        "job_progress_samples",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("read", sa.BigInteger(), nullable=False),
        sa.Column("written", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_progress_samples")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_progress_samples_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.CheckConstraint(
            "read >= 0 AND written >= 0 AND failed >= 0",
            name=op.f("ck_job_progress_samples_counters_non_negative"),
        ),
    )
    op.create_index(op.f("ix_job_progress_samples_job_id_at"), "job_progress_samples", ["job_id", "at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_job_progress_samples_job_id_at"), table_name="job_progress_samples")
    op.drop_table("job_progress_samples")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_updated_at_id"))
        batch.drop_column("updated_at")

"""Admission and per-token quotas: `jobs.admitted_at` and `jobs.created_by` (both nullable).

`admitted_at` is when admission (`scheduler.admission`) let a PENDING job start: a PENDING job without it is
queued, and its queue position is its rank among the queued jobs by creation time. Jobs from before were
started at once: each non-PENDING one is marked admitted at its creation, so the running-jobs count includes
them; PENDING ones are left to admission. `created_by` is the API token (its name) that created the job, which
the per-token quotas count; jobs from before have none.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("admitted_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("created_by", sa.String(255), nullable=True))
        batch.create_index(op.f("ix_jobs_created_by_created_at"), ["created_by", "created_at"])
    op.execute("UPDATE jobs SET admitted_at = created_at WHERE state <> 'PENDING'")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_created_by_created_at"))
        batch.drop_column("created_by")
        batch.drop_column("admitted_at")

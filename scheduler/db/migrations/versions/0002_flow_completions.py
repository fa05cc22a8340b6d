"""Per-flow completion reports: `jobs.flow_completions` (JSON, nullable).

A pipeline with several scoring flows is complete once every flow reported success (or at the first failure);
the reports so far live here, keyed by flow name. Jobs from before have none (their flows reported as a whole).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("flow_completions", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("flow_completions")

"""Per-flow progress: `jobs.flow_progress` (JSON, nullable).

Each scoring flow reports its own progress by name: state, record counters, the size of its source when known,
its rate, its outputs and what it saw of each scoring service it calls. The latest report of each flow lives
here; the job's counters stay in their columns (the sum over the flows). Jobs from before have none.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("flow_progress", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("flow_progress")

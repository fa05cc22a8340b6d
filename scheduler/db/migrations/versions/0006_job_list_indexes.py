"""Indexes for the jobs list at 100,000 jobs and more (issue 14): a pipeline's jobs newest first, and text search.

`(pipeline_version_id, created_at, id)` replaces the index on `pipeline_version_id` alone (it still serves the
foreign key): the first page of a pipeline's jobs is one walk of it. On PostgreSQL the columns the text search
(`q`) reads (`created_by`, `reason`, `message`) get trigram indexes (`pg_trgm`, GIN), which answer `ILIKE
'%word%'`: a word found in few jobs no longer means reading every row (bench/README.md, issue 14). The extension
is created if it is missing (it is trusted since PostgreSQL 13: the database owner may create it); SQLite has no
such index and keeps scanning for a rare word.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TRIGRAM_COLUMNS = ("created_by", "reason", "message")
GIN_PENDING_LIST_KB = 64
"""New entries wait in a GIN index's pending list until it holds this much (PostgreSQL's default: 4 MB), and every
search reads the whole list: at the default a burst of 100,000 new jobs made a rare word cost 80 ms until
autovacuum came; at 64 kB the list is merged into the index every few hundred jobs."""


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_pipeline_version_id"))
        batch.create_index(
            op.f("ix_jobs_pipeline_version_id_created_at_id"), ["pipeline_version_id", "created_at", "id"]
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for name in TRIGRAM_COLUMNS:
            op.create_index(
                f"ix_jobs_{name}_trgm",
                "jobs",
                [name],
                postgresql_using="gin",
                postgresql_ops={name: "gin_trgm_ops"},
                postgresql_with={"gin_pending_list_limit": GIN_PENDING_LIST_KB},
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for name in TRIGRAM_COLUMNS:
            op.drop_index(f"ix_jobs_{name}_trgm", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index(op.f("ix_jobs_pipeline_version_id_created_at_id"))
        batch.create_index(op.f("ix_jobs_pipeline_version_id"), ["pipeline_version_id"])

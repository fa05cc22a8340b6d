"""Create the scheduler schema: pipelines, pipeline_versions, jobs, job_events.

Written by hand to match `scheduler.db.models` exactly. Constraint names follow the metadata's naming
convention, spelled out and wrapped in `op.f` so the convention is not applied a second time.
`tests/scheduler/test_db_migrations.py` checks that there is no drift, on SQLite and on PostgreSQL.
The CHECK lists are spelled out rather than generated from the enums: a migration must keep describing the
schema it created even after the code's enums change (that change needs its own revision).

Revision ID: 0001
Revises:
Create Date: 2025-11-24
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATES = "'PENDING', 'INSTALLING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLING', 'CANCELLED'"
_TASKS = "'install', 'wait', 'uninstall'"


def upgrade() -> None:
    op.create_table(
        "pipelines",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=253), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipelines")),
        sa.UniqueConstraint("name", name=op.f("uq_pipelines_name")),
    )
    op.create_table(
        "pipeline_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pipeline_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("ir", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipeline_versions")),
        sa.ForeignKeyConstraint(
            ["pipeline_id"],
            ["pipelines.id"],
            name=op.f("fk_pipeline_versions_pipeline_id_pipelines"),
            ondelete="RESTRICT",
        ),
        sa.UniqueConstraint("pipeline_id", "number", name=op.f("uq_pipeline_versions_pipeline_id_number")),
        sa.UniqueConstraint("pipeline_id", "digest", name=op.f("uq_pipeline_versions_pipeline_id_digest")),
        sa.CheckConstraint("number >= 1", name=op.f("ck_pipeline_versions_number_positive")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("pipeline_version_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("task", sa.String(length=16), nullable=True),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("environment", sa.JSON(), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("backend_ref", sa.JSON(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("records_read", sa.BigInteger(), nullable=False),
        sa.Column("records_written", sa.BigInteger(), nullable=False),
        sa.Column("records_failed", sa.BigInteger(), nullable=False),
        sa.Column("completion", sa.String(length=16), nullable=True),
        sa.Column("completion_message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.ForeignKeyConstraint(
            ["pipeline_version_id"],
            ["pipeline_versions.id"],
            name=op.f("fk_jobs_pipeline_version_id_pipeline_versions"),
            ondelete="RESTRICT",
        ),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_jobs_idempotency_key")),
        sa.CheckConstraint(f"state IN ({_STATES})", name=op.f("ck_jobs_state_known")),
        sa.CheckConstraint(f"task IS NULL OR task IN ({_TASKS})", name=op.f("ck_jobs_task_known")),
        sa.CheckConstraint(
            "records_read >= 0 AND records_written >= 0 AND records_failed >= 0",
            name=op.f("ck_jobs_counters_non_negative"),
        ),
        sa.CheckConstraint(
            "completion IS NULL OR completion IN ('succeeded', 'failed')", name=op.f("ck_jobs_completion_known")
        ),
    )
    op.create_index(op.f("ix_jobs_created_at_id"), "jobs", ["created_at", "id"])
    op.create_index(op.f("ix_jobs_state"), "jobs", ["state"])
    op.create_index(op.f("ix_jobs_pipeline_version_id"), "jobs", ["pipeline_version_id"])
    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("task", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_events_job_id_jobs"), ondelete="CASCADE"),
        sa.CheckConstraint(
            f"from_state IS NULL OR from_state IN ({_STATES})", name=op.f("ck_job_events_from_state_known")
        ),
        sa.CheckConstraint(f"to_state IN ({_STATES})", name=op.f("ck_job_events_to_state_known")),
        sa.CheckConstraint(f"task IS NULL OR task IN ({_TASKS})", name=op.f("ck_job_events_task_known")),
    )
    op.create_index(op.f("ix_job_events_job_id_id"), "job_events", ["job_id", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_job_events_job_id_id"), table_name="job_events")
    op.drop_table("job_events")
    op.drop_index(op.f("ix_jobs_pipeline_version_id"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_state"), table_name="jobs")
    op.drop_index(op.f("ix_jobs_created_at_id"), table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("pipeline_versions")
    op.drop_table("pipelines")

"""Initial RouteNLP store schema: requests (+ per-tier steps), labels, feedback, artifacts.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

This revision is the source of truth for the schema; `routenlp/store/models.py` must
describe the same tables (the test suite compares them with Alembic's autogenerate). It is
self-contained on purpose: later model edits must not change what this revision creates.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine:
    """JSONB on PostgreSQL, JSON text elsewhere; Python None is SQL NULL."""
    return sa.JSON(none_as_null=True).with_variant(
        postgresql.JSONB(none_as_null=True), "postgresql"
    )


def _ts() -> sa.types.TypeEngine:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "requests",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=True),
        sa.Column("final_tier", sa.String(128), nullable=True),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("escalated", sa.Boolean(), nullable=False),
        sa.Column("path", _json(), nullable=False),
        sa.Column("total_cost", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("sla_ms", sa.Float(), nullable=True),
        sa.Column("sla_met", sa.Boolean(), nullable=True),
        sa.Column("router", _json(), nullable=True),
        sa.Column("artifact_versions", _json(), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("metadata", _json(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_requests")),
    )
    op.create_index(op.f("ix_requests_created_at"), "requests", ["created_at"])
    op.create_index(op.f("ix_requests_task_created_at"), "requests", ["task", "created_at"])
    op.create_index(
        op.f("ix_requests_escalated_created_at"), "requests", ["escalated", "created_at"]
    )
    op.create_index(op.f("ix_requests_status_created_at"), "requests", ["status", "created_at"])

    op.create_table(
        "request_steps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("tier", sa.String(128), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("accepted", sa.Boolean(), nullable=False),
        sa.Column("skipped", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_request_steps_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_request_steps")),
        sa.UniqueConstraint("request_id", "step", name=op.f("uq_request_steps_request_id_step")),
    )
    op.create_index(op.f("ix_request_steps_tier_id"), "request_steps", ["tier", "id"])
    op.create_index(
        op.f("ix_request_steps_tier_task_id"), "request_steps", ["tier", "task", "id"]
    )

    op.create_table(
        "labels",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("query_id", sa.String(256), nullable=False),
        sa.Column("task", sa.String(128), nullable=False),
        sa.Column("tier", sa.String(128), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("reference", _json(), nullable=True),
        sa.Column("quality", sa.Float(), nullable=True),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.Column("latency_s", sa.Float(), nullable=True),
        sa.Column("uncertainty", sa.Float(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("response", _json(), nullable=True),
        sa.Column("tokens_in", sa.Integer(), nullable=True),
        sa.Column("tokens_out", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("outcome_extra", _json(), nullable=True),
        sa.Column("row_extra", _json(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labels")),
        sa.UniqueConstraint(
            "source", "query_id", "tier", name=op.f("uq_labels_source_query_id_tier")
        ),
    )
    op.create_index(op.f("ix_labels_source_task"), "labels", ["source", "task"])
    op.create_index(op.f("ix_labels_task"), "labels", ["task"])

    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("quality", sa.Float(), nullable=False),
        sa.Column("reference", _json(), nullable=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("created_at", _ts(), nullable=False),
        sa.CheckConstraint(
            "quality >= 0 AND quality <= 1", name=op.f("ck_feedback_quality_range")
        ),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["requests.id"],
            name=op.f("fk_feedback_request_id_requests"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
    )
    op.create_index(op.f("ix_feedback_request_id"), "feedback", ["request_id"])
    op.create_index(op.f("ix_feedback_created_at"), "feedback", ["created_at"])

    op.create_table(
        "artifacts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("config_hash", sa.String(128), nullable=True),
        sa.Column("metadata", _json(), nullable=True),
        sa.Column("created_at", _ts(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_artifacts")),
        sa.UniqueConstraint("kind", "version", name=op.f("uq_artifacts_kind_version")),
    )
    op.create_index(op.f("ix_artifacts_kind_active"), "artifacts", ["kind", "active"])


def downgrade() -> None:
    op.drop_table("artifacts")
    op.drop_table("feedback")
    op.drop_table("labels")
    op.drop_table("request_steps")
    op.drop_table("requests")

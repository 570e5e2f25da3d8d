"""Adapters learned from the moderators' decisions: each queued item's embedding (the served model's
penultimate layer, read from the same inference), every trained adapter version with its report card,
and the log of what was done to them (trained, promoted, demoted).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reviews") as batch:
        batch.add_column(sa.Column("embedding", sa.LargeBinary))
    op.create_table(
        "adapter_versions",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("decisions", sa.Integer, nullable=False),
        sa.Column("passed", sa.Boolean, nullable=False),
        sa.Column("report", sa.Text, nullable=False),
        sa.Column("weights", sa.LargeBinary, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("changed", sa.Float, nullable=False),
        sqlite_autoincrement=True,  # a version number is never reused
    )
    op.create_index(
        "adapter_versions_one_promoted",
        "adapter_versions",
        ["model"],
        unique=True,
        sqlite_where=sa.text("status = 'promoted'"),
        postgresql_where=sa.text("status = 'promoted'"),
    )
    op.create_table(
        "adapter_audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("actor", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("adapter_audit_version", "adapter_audit", ["version"])


def downgrade() -> None:
    op.drop_index("adapter_audit_version", "adapter_audit")
    op.drop_table("adapter_audit")
    op.drop_index("adapter_versions_one_promoted", "adapter_versions")
    op.drop_table("adapter_versions")
    # ALTER TABLE ... DROP COLUMN, never a rebuilt table: on SQLite a rebuilt `reviews` would take
    # every ref with it (ON DELETE CASCADE, foreign keys on).
    op.execute("ALTER TABLE reviews DROP COLUMN embedding")

"""Near-duplicate memory: each review item's PDQ hashes, the matcher's signals (human decisions' and
banks'), the banks, and the log of changes the workers' indexes follow.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_hashes",
        sa.Column("review_id", sa.String(32), sa.ForeignKey("reviews.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("variant", sa.Integer, nullable=False),
        sa.Column("pdq", sa.String(64), nullable=False),
        sa.Column("quality", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("review_id", "position", "variant"),
    )
    op.create_table(
        "match_signals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("owner", sa.String(80), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("pdq", sa.String(64), nullable=False),
        sa.Column("quality", sa.Integer),
        sa.Column("note", sa.Text),
        sa.Column("added", sa.Float, nullable=False),
        sa.Column("added_by", sa.String(64), nullable=False),
    )
    op.create_index("match_signals_owner_pdq", "match_signals", ["owner", "pdq"], unique=True)
    op.create_table(
        "match_banks",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("distance", sa.Integer),
        sa.Column("created", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(64), nullable=False),
    )
    op.create_table(
        "match_changes",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("owner", sa.String(80), nullable=False),
        sa.Column("signal", sa.Integer),
        sqlite_autoincrement=True,  # a number is never reused, even once the log is pruned empty
    )
    op.create_index("match_changes_at", "match_changes", ["at"])


def downgrade() -> None:
    op.drop_table("match_changes")
    op.drop_table("match_banks")
    op.drop_table("match_signals")
    op.drop_table("review_hashes")

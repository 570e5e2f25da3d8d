"""Trust in the loop: refs belong to the key that sent them, an animation's frames and the frame that
decided, moderators' session generations, webhook lease tokens, and the indexes retention needs.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reviews") as batch:
        batch.add_column(sa.Column("frame_count", sa.Integer))
        batch.add_column(sa.Column("frames", sa.Text))
        batch.add_column(sa.Column("chosen_frame", sa.Integer))
        batch.add_column(sa.Column("pending_since", sa.Float))
    op.execute("UPDATE reviews SET pending_since = created WHERE status = 'pending'")
    op.create_index("reviews_key_status", "reviews", ["key_name", "status"])

    # The refs' key is part of their primary key: a new table, the old refs copied over (their key is
    # unknown: the item's own key sent the first, so that is the best guess), then renamed.
    op.create_table(
        "review_refs_new",
        sa.Column("review_id", sa.String(32), sa.ForeignKey("reviews.id", ondelete="CASCADE"), nullable=False),
        sa.Column("key_name", sa.String(64), nullable=False),
        sa.Column("ref", sa.String(200), nullable=False),
        sa.Column("added", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("review_id", "key_name", "ref"),
    )
    op.execute(
        "INSERT INTO review_refs_new (review_id, key_name, ref, added) "
        "SELECT r.review_id, v.key_name, r.ref, r.added FROM review_refs r JOIN reviews v ON v.id = r.review_id"
    )
    op.drop_table("review_refs")
    op.rename_table("review_refs_new", "review_refs")
    if op.get_bind().dialect.name == "postgresql":  # the constraints keep the table's name
        op.execute("ALTER TABLE review_refs RENAME CONSTRAINT review_refs_new_pkey TO review_refs_pkey")
        op.execute(
            "ALTER TABLE review_refs RENAME CONSTRAINT review_refs_new_review_id_fkey TO review_refs_review_id_fkey"
        )

    op.create_table(
        "review_frames",
        sa.Column("review_id", sa.String(32), sa.ForeignKey("reviews.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("frame_index", sa.Integer, nullable=False),
        sa.Column("thumbnail", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("review_id", "position"),
    )
    op.create_index("review_audit_review", "review_audit", ["review_id"])
    op.create_index("review_audit_at", "review_audit", ["at"])
    with op.batch_alter_table("webhook_outbox") as batch:
        batch.add_column(sa.Column("lease_token", sa.String(32)))
    op.create_index("webhook_outbox_review", "webhook_outbox", ["review_id"])
    with op.batch_alter_table("moderators") as batch:
        # "0" on every existing row, which no session carries: every session made before is ended.
        batch.add_column(sa.Column("generation", sa.String(32), nullable=False, server_default="0"))


def downgrade() -> None:
    # Columns go by ALTER TABLE ... DROP COLUMN (SQLite 3.35+), never by rebuilding a table: on SQLite
    # a rebuilt `reviews` would take every ref with it (ON DELETE CASCADE, foreign keys on).
    op.execute("ALTER TABLE moderators DROP COLUMN generation")
    op.drop_index("webhook_outbox_review", "webhook_outbox")
    op.execute("ALTER TABLE webhook_outbox DROP COLUMN lease_token")
    op.drop_index("review_audit_at", "review_audit")
    op.drop_index("review_audit_review", "review_audit")
    op.drop_table("review_frames")
    op.create_table(
        "review_refs_old",
        sa.Column("review_id", sa.String(32), sa.ForeignKey("reviews.id", ondelete="CASCADE"), nullable=False),
        sa.Column("ref", sa.String(200), nullable=False),
        sa.Column("added", sa.Float, nullable=False),
        sa.PrimaryKeyConstraint("review_id", "ref"),
    )
    op.execute(
        "INSERT INTO review_refs_old (review_id, ref, added) "
        "SELECT review_id, ref, MIN(added) FROM review_refs GROUP BY review_id, ref"
    )
    op.drop_table("review_refs")
    op.rename_table("review_refs_old", "review_refs")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE review_refs RENAME CONSTRAINT review_refs_old_pkey TO review_refs_pkey")
        op.execute(
            "ALTER TABLE review_refs RENAME CONSTRAINT review_refs_old_review_id_fkey TO review_refs_review_id_fkey"
        )
    op.drop_index("reviews_key_status", "reviews")
    for column in ("pending_since", "chosen_frame", "frames", "frame_count"):
        op.execute(f"ALTER TABLE reviews DROP COLUMN {column}")

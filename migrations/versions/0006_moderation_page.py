"""A team's moderation page: each item's preview (the picture a moderator opens full-size) and its
frame's size, the reason code a decision gave, escalation to leads, appeals, the adult score the
search filters on, and the moderators' roles and wellbeing settings.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reviews") as batch:
        batch.add_column(sa.Column("preview", sa.LargeBinary))
        batch.add_column(sa.Column("width", sa.Integer))
        batch.add_column(sa.Column("height", sa.Integer))
        batch.add_column(sa.Column("reason_code", sa.String(40)))
        batch.add_column(sa.Column("adult", sa.Float))
        batch.add_column(sa.Column("escalated", sa.Float))
        batch.add_column(sa.Column("escalated_by", sa.String(64)))
        batch.add_column(sa.Column("appealed", sa.Float))
        batch.add_column(sa.Column("appeal_ref", sa.String(200)))
        batch.add_column(sa.Column("appeal_statement", sa.Text))
        batch.add_column(sa.Column("appealed_label", sa.String(16)))
        batch.add_column(sa.Column("appealed_decider", sa.String(64)))
    op.create_index("reviews_decided", "reviews", ["decided"])
    with op.batch_alter_table("moderators") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=False, server_default="moderator"))
        batch.add_column(sa.Column("wellbeing", sa.Text))
    # The adult score of the items already there (the sum of their model's adult classes), so that
    # the search's score range finds them too: a thousand rows at a time, read by id and written in
    # one statement (row by row, a million items took minutes under the migration lock; all at once,
    # their scores filled the memory).
    connection = op.get_bind()
    read = sa.text("SELECT id, model, scores FROM reviews WHERE id > :last ORDER BY id LIMIT 1000")
    write = sa.text("UPDATE reviews SET adult = :adult WHERE id = :id")
    last = ""
    while rows := connection.execute(read, {"last": last}).all():
        batch = []
        for row in rows:
            scores = json.loads(row.scores)
            names = ADULT_CLASSES.get(row.model, ("hentai", "porn", "sexy"))
            batch.append({"adult": sum(float(scores.get(name, 0.0)) for name in names), "id": row.id})
        connection.execute(write, batch)
        last = rows[-1].id


# Each model's adult classes when this revision was written (nsfw/model/specs.py); a migration does
# not follow the code's later changes.
ADULT_CLASSES = {
    "mobilenet_v2": ("hentai", "porn", "sexy"),
    "inception_v3": ("hentai", "porn", "sexy"),
    "open_nsfw": ("nsfw",),
    "private_detector": ("lewd",),
}


def downgrade() -> None:
    # Columns go by ALTER TABLE ... DROP COLUMN (SQLite 3.35+), never by rebuilding a table: on SQLite
    # a rebuilt `reviews` would take every ref with it (ON DELETE CASCADE, foreign keys on).
    for column in ("wellbeing", "role"):
        op.execute(f"ALTER TABLE moderators DROP COLUMN {column}")
    op.drop_index("reviews_decided", "reviews")
    for column in (
        "appealed_decider",
        "appealed_label",
        "appeal_statement",
        "appeal_ref",
        "appealed",
        "escalated_by",
        "escalated",
        "adult",
        "reason_code",
        "height",
        "width",
        "preview",
    ):
        op.execute(f"ALTER TABLE reviews DROP COLUMN {column}")

"""The moderator's page: each item's preview (the picture a moderator opens full-size) and its frame's
size, and the reason code a decision gave.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

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


def downgrade() -> None:
    with op.batch_alter_table("reviews") as batch:
        batch.drop_column("reason_code")
        batch.drop_column("height")
        batch.drop_column("width")
        batch.drop_column("preview")

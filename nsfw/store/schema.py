"""The one MetaData every feature's tables join (Alembic's target, migrations/env.py): the review
queue's (nsfw/review/tables.py) and the matcher's (nsfw/matching/tables.py)."""

from __future__ import annotations

from sqlalchemy import MetaData

metadata = MetaData()

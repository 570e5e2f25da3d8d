"""The matcher's tables: the signals every worker's index holds, the banks an operator curates, and
the log of changes the workers follow (`metadata`: nsfw/store/schema.py; Alembic revision 0005).

The database is the source of truth and each worker's index (nsfw/matching/index.py) a copy of
`match_signals`, rebuilt from it at start and kept up by reading `match_changes` (HMA's rule: the
matcher's index is derived, never the record).
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, String, Table, Text

from nsfw.store.schema import metadata

# What matches: a human decision's hashes (owner: the review item's id) or a bank's (owner: "bank:"
# and its name), with the label a match gives.
signals = Table(
    "match_signals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(80), nullable=False),
    Column("label", String(16), nullable=False),  # adult | safe
    Column("pdq", String(64), nullable=False),
    Column("quality", Integer),  # None: imported without one
    Column("note", Text),  # a bank signal's, as imported (ThreatExchange's and HMA's files carry one)
    Column("added", Float, nullable=False),
    Column("added_by", String(64), nullable=False),
    Index("match_signals_owner_pdq", "owner", "pdq", unique=True),
)

banks = Table(
    "match_banks",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("label", String(16), nullable=False),  # adult: a match is adult; safe: never automatically adult
    Column("distance", Integer),  # None: NSFW_MATCH_DISTANCE
    Column("created", Float, nullable=False),
    Column("created_by", String(64), nullable=False),
)

# One row per change of an owner's signals, in commit order (writers take a lock first on
# PostgreSQL, so a follower never reads a later change before an earlier one commits); signal set:
# that signal was added; None: the owner's signals are read again whole.
changes = Table(
    "match_changes",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("owner", String(80), nullable=False),
    Column("signal", Integer),
    Index("match_changes_at", "at"),
    # SQLite: never reuse a number, even once the log is pruned empty (a follower's position stands).
    sqlite_autoincrement=True,
)

"""The database every feature shares: what it owns, and what it leaves to the features.

- engine.py: one engine per process, made after the fork (SQLite with WAL and BEGIN IMMEDIATE, or
  PostgreSQL with the serving timeouts), `reading` for reads that take no lock, and `checkpoint` for
  SQLite's WAL; the only module that speaks SQL's dialects.
- migrate.py: the schema, Alembic's (migrations/, one revision per change): `upgrade`, `downgrade`,
  `revisions` (the store against the migrations' head, without importing Alembic), one process at a
  time.
- maintenance.py: the one background thread of a worker; each feature registers its duties with it
  (name, period, callable), each on its own schedule and failing alone, and what to close at exit.

Each feature keeps its own tables and SQL in its own package (the review queue's: nsfw/review/tables.py
and queue.py); the store imports no feature.
"""

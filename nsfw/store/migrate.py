"""The store's schema: Alembic's migrations (migrations/, one revision per change), run once per start
before any worker serves (gunicorn.conf.py runs `python -m nsfw db upgrade`); a worker only checks
that the store is at the head (`revisions`), without importing Alembic (6 MB a worker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, inspect, text

from nsfw.store.engine import make_engine

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "migrations"


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


# Any constant of ours: instances starting at once on one PostgreSQL take turns migrating.
_MIGRATION_LOCK = 0x6E736677


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the store to revision (Alembic), one process at a time: SQLite's BEGIN IMMEDIATE and
    a PostgreSQL advisory lock serialise concurrent starts."""
    _migrate(url, revision, down=False)


def downgrade(url: str, revision: str) -> None:
    """Migrate the store back to revision (an operator's way back from a release; tested)."""
    _migrate(url, revision, down=True)


def _migrate(url: str, revision: str, *, down: bool) -> None:
    from alembic import command

    engine = make_engine(url, serving=False)
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            config = _alembic_config(url)
            config.attributes["connection"] = connection
            (command.downgrade if down else command.upgrade)(config, revision)
    finally:
        engine.dispose()


# The newest migration's revision (migrations/versions/). Workers compare the store with it without
# importing Alembic; tests/test_review.py checks it is Alembic's head.
HEAD = "0007"


def revisions(engine: Engine) -> tuple[str | None, str]:
    """The store's current revision (None before any migration) and the migrations' head."""
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None, HEAD
        current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return current, HEAD


def alembic_head() -> str:
    """The head as Alembic reads it from migrations/ (the CLI and the tests)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config("")).get_current_head()
    assert head is not None
    return head

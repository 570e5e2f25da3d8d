"""The review store's tables, engine and migrations: the only module that speaks SQL's dialects.

SQLAlchemy 2 Core over SQLite (the default, `$NSFW_DATA_DIR/nsfw.db`) or PostgreSQL (psycopg 3). The
schema is Alembic's (migrations/, one revision per change); these Table objects are what the queries
use, and tests/test_review_store.py checks that they match what the migrations make.

SQLite: WAL (readers never wait for a writer), a 5 s busy timeout, and every transaction that may
write BEGIN IMMEDIATE, so a transaction that reads and then writes takes the write lock first and
never meets SQLite's immediate "database is locked" (which it answers, without waiting, to a reader
upgrading while another connection writes). Reads (`reading`) begin deferred: they take no lock, so
a long export or the prediction path's lookups never hold up a decision. The WAL is checkpointed
and truncated by the maintenance thread (`checkpoint`), and capped at WAL_LIMIT_BYTES after each
checkpoint, so a full disk that stopped the checkpoints does not leave it grown for good. One
engine per process, made after the fork (create_app).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
    text,
    true,
)

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "migrations"
_BUSY_SECONDS = 5.0

metadata = MetaData()

reviews = Table(
    "reviews",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("created", Float, nullable=False),
    Column("kind", String(16), nullable=False),  # unknown (the model could not decide) | audit (a sample)
    Column("status", String(16), nullable=False),  # pending | decided | expired (left undecided past retention)
    Column("sha256", String(64), nullable=False),
    Column("key_name", String(64), nullable=False),
    Column("source_url", Text),
    Column("model", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("scores", Text, nullable=False),  # JSON
    Column("verdict", String(16), nullable=False),  # the automatic label
    Column("reason", Text, nullable=False),
    Column("thumbnail", LargeBinary),  # JPEG, longest side 256; None after retention
    Column("claimed_by", String(64)),
    Column("claim_until", Float),
    Column("decided", Float),  # when it left the queue: decided, or expired
    Column("label", String(16)),  # adult | safe
    Column("decided_by", String(64)),
    Column("note", Text),
    # What the model judged: the image's frame count, and for an animation each classified frame's
    # index and scores (JSON [{"index", "scores"}]) and the index of the frame that decided the verdict
    # (the thumbnail's); NULL for items queued before revision 0004.
    Column("frame_count", Integer),
    Column("frames", Text),
    Column("chosen_frame", Integer),
    # Since when the item waits for a human: queued, or undone (expiry counts from here, not `created`).
    Column("pending_since", Float),
    Index("reviews_sha256", "sha256"),
    Index("reviews_key_status", "key_name", "status"),
    Index("reviews_status_created", "status", "created"),
    # One pending item per image: the same bytes join it (their refs are kept).
    Index(
        "reviews_one_pending_per_image",
        "sha256",
        unique=True,
        sqlite_where=text("status = 'pending'"),
        postgresql_where=text("status = 'pending'"),
    ),
)

refs = Table(
    "review_refs",
    metadata,
    Column("review_id", String(32), ForeignKey("reviews.id", ondelete="CASCADE"), nullable=False),
    Column("key_name", String(64), nullable=False),  # the key that sent the ref: its client app's own
    Column("ref", String(200), nullable=False),
    Column("added", Float, nullable=False),
    PrimaryKeyConstraint("review_id", "key_name", "ref"),
)

# An animation's classified frames, each as the moderator sees it (JPEG, longest side 256): the strip
# under the item. Dropped with the thumbnail at retention.
frames = Table(
    "review_frames",
    metadata,
    Column("review_id", String(32), ForeignKey("reviews.id", ondelete="CASCADE"), nullable=False),
    Column("position", Integer, nullable=False),  # 0.. in the animation's order
    Column("frame_index", Integer, nullable=False),
    Column("thumbnail", LargeBinary, nullable=False),
    PrimaryKeyConstraint("review_id", "position"),
)

audit = Table(
    "review_audit",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(32), nullable=False),  # claimed | decided | reverted | deleted | expired
    Column("review_id", String(32), nullable=False),
    Column("detail", Text, nullable=False),  # JSON
    Index("review_audit_review", "review_id"),
    Index("review_audit_at", "at"),
)

outbox = Table(
    "webhook_outbox",
    metadata,
    Column("id", String(40), primary_key=True),  # the webhook-id: the same on every attempt
    Column("review_id", String(32), nullable=False),
    Column("event", String(32), nullable=False),
    Column("payload", Text, nullable=False),  # the JSON body, as signed
    Column("status", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False),
    Column("next_at", Float, nullable=False),
    Column("lease_until", Float),  # a sender's claim on the row while it sends...
    Column("lease_token", String(32)),  # ...and whose: only the holder reschedules the row
    Column("last_error", Text),
    Column("created", Float, nullable=False),
    Column("delivered", Float),
    Index("webhook_outbox_due", "status", "next_at"),
    Index("webhook_outbox_review", "review_id"),
)


moderators = Table(
    "moderators",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("password_hash", Text, nullable=False),  # Argon2id, argon2-cffi's encoding
    Column("created", Float, nullable=False),
    Column("blur", Boolean, nullable=False, server_default=true()),  # thumbnails blurred until revealed
    # A random token in every session cookie of this moderator, checked on every request; a new one
    # (sign-out, a new password) ends every session made before it.
    Column("generation", String(32), nullable=False, server_default="0"),
)


def _sqlite_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # The driver's own transaction handling off: the begin hook below says BEGIN IMMEDIATE itself.
    dbapi_connection.isolation_level = None
    deadline = time.monotonic() + _BUSY_SECONDS
    while True:
        try:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:  # another connection's first use of the file
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
    dbapi_connection.execute(f"PRAGMA busy_timeout={int(_BUSY_SECONDS * 1000)}")
    dbapi_connection.execute("PRAGMA foreign_keys=ON")
    dbapi_connection.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at each checkpoint, fast commits
    # A checkpoint that resets the WAL truncates it to this size: it never stays grown.
    dbapi_connection.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")


WAL_LIMIT_BYTES = 1024 * 1024
READ = "nsfw_read"


def _sqlite_begin(connection: Connection) -> None:
    deferred = connection.get_execution_options().get(READ, False)
    connection.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


# PostgreSQL, serving: a store that does not answer costs a bounded wait where the client can bound
# it. libpq: 3 s to connect; TCP keepalives and a 10 s user timeout for a peer gone from the network;
# the pool waits 5 s for a free connection (SQLAlchemy's default: 30 s). The server ends a statement
# past 15 s and a transaction left idle past 60 s (an export whose client stopped reading): set per
# transaction (SET LOCAL), not as the startup `options`, which would replace a URL's own `options`
# and which poolers such as PgBouncer, in front of managed databases, refuse. A server that is frozen
# (its kernel still answering) is bounded on the prediction path alone (nsfw/review StoreGate).
_PG_CONNECT = {
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}
_PG_SERVING = "SET LOCAL statement_timeout = 15000; SET LOCAL idle_in_transaction_session_timeout = 60000"
POOL_TIMEOUT = 5.0


def _pg_begin(connection: Connection) -> None:
    # On a plain cursor of the driver's, whatever the connection's options: a streamed read's
    # server-side cursor cannot DECLARE a SET.
    cursor = connection.connection.cursor()
    try:
        cursor.execute(_PG_SERVING)
    finally:
        cursor.close()


def make_engine(url: str, *, serving: bool = True) -> Engine:
    """The process's engine for url; SQLite's folder is made when missing. `serving` (not for
    migrations, which may take their time): PostgreSQL's statement and idle-transaction timeouts."""
    if url.startswith("sqlite"):
        path = Path(url.split(":///", 1)[1])
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": _BUSY_SECONDS, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    engine = create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=POOL_TIMEOUT, connect_args=_PG_CONNECT
    )
    if serving:
        event.listen(engine, "begin", _pg_begin)
    return engine


def reading(engine: Engine) -> Connection:
    """A connection for reads alone: on SQLite its transaction is deferred (no write lock taken)."""
    return engine.connect().execution_options(**{READ: True})


def checkpoint(engine: Engine) -> bool:
    """SQLite: move the WAL into the database and truncate it; False when a reader or a writer is in
    the way (the next checkpoint does it). It never waits: a TRUNCATE checkpoint that waits holds every
    writer off meanwhile (5 s behind a long read, every minute). A no-op elsewhere."""
    if engine.dialect.name != "sqlite":
        return True
    raw = engine.raw_connection()  # outside any transaction: a checkpoint cannot run inside one
    db = raw.driver_connection
    try:
        db.execute("PRAGMA busy_timeout=0")  # type: ignore[union-attr]
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()  # type: ignore[union-attr]
    finally:
        db.execute(f"PRAGMA busy_timeout={int(_BUSY_SECONDS * 1000)}")  # type: ignore[union-attr]
        raw.close()
    return not busy


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
# importing Alembic (6 MB a worker); tests/test_review.py checks it is Alembic's head.
HEAD = "0004"


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

"""The store's engine: the only module that speaks SQL's dialects.

SQLAlchemy 2 Core over SQLite (the default, `$NSFW_DATA_DIR/nsfw.db`) or PostgreSQL (psycopg 3).

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

import hashlib
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text

_BUSY_SECONDS = 5.0


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


def transaction_lock(connection: Connection, name: str) -> None:
    """PostgreSQL: take the advisory lock named `name` until the transaction ends (writers of one
    thing take turns: a key's new items, a bank's imports, the matcher's change log). SQLite's writers
    take turns anyway (BEGIN IMMEDIATE): a no-op there."""
    if connection.dialect.name == "postgresql":
        lock = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        connection.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": lock})

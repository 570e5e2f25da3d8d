"""Where the rate limit counters live: a SQLite file every worker of one instance shares (no server),
or Redis for several instances.

Flask-Limiter's memory storage is per process, so with 2 workers it alone lets twice the limit
through. gunicorn.conf.py makes NSFW_INSTANCE_DIR fresh on tmpfs at each start; the counters live in
`limits.sqlite` there, and every increment is one `BEGIN IMMEDIATE` transaction, which SQLite
serialises across processes (about 0.1 ms on tmpfs). Fixed windows only (Flask-Limiter's default
strategy): a key's count and the time its window ends.

URI: `nsfw+sqlite:///path/to/limits.sqlite` (registered with `limits` by this class's scheme).

NSFW_RATE_LIMIT_STORAGE=redis://… puts them in Redis instead, shared by every instance that names
it: `limits`' own RedisStorage, whose failures are counted like the SQLite file's (`CountedRedisStorage`).
"""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from limits.storage import RedisStorage, Storage

from nsfw import metrics
from nsfw.config import REDIS_SCHEMES

P = ParamSpec("P")
R = TypeVar("R")

SCHEME = "nsfw+sqlite"
_COUNTED = "nsfw+"


def _counted(method: Callable[P, R]) -> Callable[P, R]:
    """The store's failures, in nsfw_rate_limit_errors_total (Flask-Limiter logs them and lets the
    request through)."""

    @functools.wraps(method)
    def counted(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except Exception:
            metrics.RATE_LIMIT_ERRORS.inc()
            raise

    return counted


_BUSY_SECONDS = 5.0


def _prepare(db: sqlite3.Connection) -> None:
    """WAL mode and the table, on a fresh connection. Two workers' first requests may do this at once
    on a new file, and SQLite answers a journal-mode change that meets another connection's lock with
    "database is locked" at once, without waiting the busy timeout: so wait here, up to that timeout."""
    deadline = time.monotonic() + _BUSY_SECONDS
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")  # on tmpfs; the counters need no durability
            db.execute("CREATE TABLE IF NOT EXISTS windows (key TEXT PRIMARY KEY, count INTEGER, ends REAL)")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class SqliteStorage(Storage):
    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        self._path = uri.split("://", 1)[1]
        self._local = threading.local()
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return sqlite3.Error

    def _db(self) -> sqlite3.Connection:
        """This thread's connection (sqlite3 connections are not shared between threads), opened on
        first use: a store that cannot be opened fails the requests' limit checks, which fall back
        to the process's counters (access.install_limits), not the boot."""
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self._path, timeout=_BUSY_SECONDS, isolation_level=None)
            try:
                _prepare(db)
            except BaseException:
                db.close()
                raise
            self._local.db = db
        return db

    @_counted
    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        db = self._db()
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT count, ends FROM windows WHERE key = ?", (key,)).fetchone()
            if row is None or row[1] <= now:
                count, ends = amount, now + expiry
            else:
                count, ends = row[0] + amount, row[1]
            db.execute("INSERT OR REPLACE INTO windows (key, count, ends) VALUES (?, ?, ?)", (key, count, ends))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(count)

    @_counted
    def get(self, key: str) -> int:
        row = self._db().execute("SELECT count FROM windows WHERE key = ? AND ends > ?", (key, time.time())).fetchone()
        return int(row[0]) if row else 0

    @_counted
    def get_expiry(self, key: str) -> float:
        row = self._db().execute("SELECT ends FROM windows WHERE key = ?", (key,)).fetchone()
        return float(row[0]) if row and row[0] > time.time() else time.time()

    def check(self) -> bool:
        try:
            self._db().execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def reset(self) -> int | None:
        with self._db() as db:
            return db.execute("DELETE FROM windows").rowcount

    def clear(self, key: str) -> None:
        self._db().execute("DELETE FROM windows WHERE key = ?", (key,))


class CountedRedisStorage(RedisStorage):
    """limits' Redis storage, its failures counted in nsfw_rate_limit_errors_total (Flask-Limiter logs
    them and lets the request through). URI: `nsfw+redis://…`, which is `redis://…` to the client."""

    STORAGE_SCHEME = [_COUNTED + scheme for scheme in REDIS_SCHEMES]

    def __init__(self, uri: str, wrap_exceptions: bool = False, **options: Any) -> None:
        super().__init__(uri.removeprefix(_COUNTED), wrap_exceptions=wrap_exceptions, **options)

    incr = _counted(RedisStorage.incr)
    get = _counted(RedisStorage.get)
    get_expiry = _counted(RedisStorage.get_expiry)


def storage_uri(configured: str, instance_dir: Path | None) -> str:
    """The `limits` URI of the counters: NSFW_RATE_LIMIT_STORAGE's Redis, else the instance's SQLite
    file, else (no gunicorn, no instance folder) the process's memory."""
    if configured:
        return _COUNTED + configured
    if instance_dir is not None:
        return f"{SCHEME}://{instance_dir / 'limits.sqlite'}"
    return "memory://"

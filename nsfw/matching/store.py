"""The matcher's store: what is remembered (a decision's hashes, a bank's signals), the log of changes,
and each worker's follower that keeps its index (nsfw/matching/index.py) equal to the store.

Every change of an owner's signals writes a row to `match_changes` in the same transaction. On
PostgreSQL the writer first takes one advisory lock, held to its commit, so rows commit in the order
of their sequence numbers and a follower reading `seq > last` never steps over one still to commit
(SQLite's writers are serial anyway). The follower reads the log every FOLLOW_EVERY seconds on the
store's maintenance thread: a hash decided through one worker (or another instance on the same
PostgreSQL) matches in every other within a couple of seconds. A follower that finds the log pruned
past its position (a thread stuck for longer than the log is kept) loads everything again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select

from nsfw import metrics
from nsfw.matching.index import BANK_PREFIX, Index, Signal
from nsfw.matching.tables import banks, changes, signals
from nsfw.store.engine import reading, transaction_lock

log = logging.getLogger(__name__)

FOLLOW_EVERY = 1.0
LOG_KEPT_SECONDS = 86400.0
_LOG_LOCK = "nsfw-match-changes"  # the advisory lock of match_changes' writers
_LOAD_CHUNK = 20_000


@dataclass(frozen=True)
class Hashed:
    """A hash to remember, with its quality (None: imported without one) and note."""

    pdq: str
    quality: int | None = None
    note: str | None = None


def log_change(connection: Any, now: float, owner: str, signal: int | None = None) -> None:
    """Record that an owner's signals changed (signal: the one added), in the caller's transaction;
    last in it, so that the lock is held only to the commit."""
    transaction_lock(connection, _LOG_LOCK)
    connection.execute(insert(changes).values(at=now, owner=owner, signal=signal))


def add_new(connection: Any, now: float, owner: str, label: str, hashes: Sequence[Hashed], by: str) -> int:
    """Add the hashes an owner does not hold yet as its signals with a label (one chunk of a bank's
    import, a decision's few); how many were new. The change is the caller's to log."""
    known = set(
        connection.execute(
            select(signals.c.pdq).where(signals.c.owner == owner, signals.c.pdq.in_({h.pdq for h in hashes}))
        ).scalars()
    )
    rows = []
    for hashed in hashes:
        if hashed.pdq in known:
            continue
        known.add(hashed.pdq)
        rows.append(
            {
                "owner": owner,
                "label": label,
                "pdq": hashed.pdq,
                "quality": hashed.quality,
                "note": hashed.note,
                "added": now,
                "added_by": by,
            }
        )
    if rows:
        connection.execute(insert(signals), rows)
    return len(rows)


def remember(connection: Any, now: float, owner: str, label: str, hashes: Sequence[Hashed], by: str) -> int:
    """A decision's hashes made signals with its label (add_new), the change logged."""
    added = add_new(connection, now, owner, label, hashes, by) if hashes else 0
    if added:
        log_change(connection, now, owner)
    return added


def forget(connection: Any, now: float, owner: str) -> None:
    """An owner's signals gone (a decision undone or deleted, a bank deleted); the change is logged."""
    if connection.execute(delete(signals).where(signals.c.owner == owner)).rowcount:
        log_change(connection, now, owner)


def bank_owner(name: str) -> str:
    return BANK_PREFIX + name


class Follower:
    """One worker's index, loaded from the store and kept up with its log."""

    def __init__(self, engine: Engine, index: Index, distance: int) -> None:
        self.engine = engine
        self.index = index
        self.distance = distance
        self.last = 0
        self.loaded = False
        self.followed = time.monotonic()

    def load(self) -> None:
        """Everything, from scratch: the log's position first, then the signals (a change between
        the two is applied again by the next follow, which is harmless: applying is idempotent)."""
        started = time.perf_counter()
        index = Index(self.index.min_quality)
        with reading(self.engine) as connection:
            last = connection.execute(select(func.coalesce(func.max(changes.c.seq), 0))).scalar_one()
            distances = self._bank_distances(connection)
            query = select(signals).order_by(signals.c.id)
            for chunk in (
                connection.execution_options(stream_results=True, yield_per=_LOAD_CHUNK)
                .execute(query)
                .partitions(_LOAD_CHUNK)
            ):
                index.add(self._signal(row, distances) for row in chunk)
        self.index.adopt(index)
        self.last, self.loaded, self.followed = int(last), True, time.monotonic()
        metrics.MATCH_SIGNALS.set(len(self.index))
        log.info("match index: %d signals loaded in %.2f s", len(self.index), time.perf_counter() - started)

    def follow(self) -> None:
        """Apply the changes logged since the last: an owner's signals read again whole, or one
        signal added."""
        if not self.loaded:
            self.load()
            return
        if time.monotonic() - self.followed > LOG_KEPT_SECONDS / 2:
            # Stuck for longer than the log is surely kept (a hung store): what was pruned meanwhile
            # cannot be read, so everything is.
            log.warning("match index: not followed for %.0f s; loading it again", time.monotonic() - self.followed)
            self.load()
            return
        with reading(self.engine) as connection:
            rows = connection.execute(
                select(changes.c.seq, changes.c.owner, changes.c.signal)
                .where(changes.c.seq > self.last)
                .order_by(changes.c.seq)
                .limit(1000)
            ).all()
            if not rows:
                newest = connection.execute(select(func.max(changes.c.seq))).scalar()
                if newest is not None and newest < self.last:  # a log that started again (restored)
                    log.warning("match index: the change log is behind this worker's position; loading it again")
                    self.load()
                    return
                self.followed = time.monotonic()
                return
            distances = self._bank_distances(connection)
            owners = {row.owner for row in rows if row.signal is None}
            added = [row.signal for row in rows if row.signal is not None and row.owner not in owners]
            for owner in owners:
                current = connection.execute(select(signals).where(signals.c.owner == owner)).all()
                self.index.replace_owner(owner, [self._signal(row, distances) for row in current])
            if added:
                current = connection.execute(select(signals).where(signals.c.id.in_(added))).all()
                self.index.add(self._signal(row, distances) for row in current)
        self.last, self.followed = int(rows[-1].seq), time.monotonic()
        metrics.MATCH_SIGNALS.set(len(self.index))

    def prune(self) -> None:
        """The log's rows older than LOG_KEPT_SECONDS go (every worker follows within seconds)."""
        with self.engine.begin() as connection:
            connection.execute(delete(changes).where(changes.c.at < time.time() - LOG_KEPT_SECONDS))

    @staticmethod
    def _bank_distances(connection: Any) -> dict[str, int | None]:
        return {
            bank_owner(row.name): row.distance for row in connection.execute(select(banks.c.name, banks.c.distance))
        }

    def _signal(self, row: Any, distances: dict[str, int | None]) -> Signal:
        distance = distances.get(row.owner)
        return Signal(
            id=int(row.id),
            owner=row.owner,
            label=row.label,
            pdq=row.pdq,
            quality=row.quality,
            distance=self.distance if distance is None else int(distance),
        )


def parse_lines(lines: Iterable[str]) -> Iterator[Hashed]:
    """Hashes from the plain formats the hash-sharing world uses: one PDQ hex per line, optionally
    followed by `,quality` and `,note` (pdq-photo-hasher's `hash,quality,filename`; HMA's and
    ThreatExchange's exports); or JSON Lines with "pdq" (or "signal"/"hash"), "quality", "note".
    Blank lines, `#` comments and a header line are skipped; ValueError names the first bad line."""
    import csv
    import json

    from nsfw.matching.pdq import parse

    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            if stripped.startswith("{"):
                record = json.loads(stripped)
                value = record.get("pdq") or record.get("signal") or record.get("hash")
                if not isinstance(value, str):
                    raise ValueError("no pdq")
                quality, note = record.get("quality"), record.get("note")
            else:
                fields = next(csv.reader([stripped]))
                if number == 1 and fields[0].strip().lower() in ("pdq", "hash", "signal"):
                    continue
                value = fields[0]
                quality = fields[1].strip() if len(fields) > 1 and fields[1].strip() else None
                note = ",".join(fields[2:]) if len(fields) > 2 else None
            if isinstance(quality, bool) or isinstance(quality, float):
                raise ValueError("quality must be a whole number 0..100")
            if quality is not None:
                quality = int(quality)
                if not 0 <= quality <= 100:
                    raise ValueError("quality must be 0..100")
            if note is not None and not isinstance(note, str):
                raise ValueError("note must be a string")
            yield Hashed(parse(value), quality, one_line(note))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"line {number}: {exc}") from None


def one_line(note: str | None) -> str | None:
    """A note as a signal keeps it: one line (a file of one signal a line stays one), 500 characters."""
    if not note:
        return None
    return " ".join(note.splitlines())[:500] or None


def export_lines(rows: Sequence[Any], fmt: str) -> Iterator[str]:
    """Signals as lines: `csv` (pdq[,quality[,note]], no header, as pdq-photo-hasher writes) or
    `jsonl`."""
    import csv
    import io
    import json

    for row in rows:
        if fmt == "jsonl":
            record: dict[str, Any] = {"pdq": row.pdq}
            if row.quality is not None:
                record["quality"] = row.quality
            if row.note is not None:
                record["note"] = one_line(row.note)
            yield json.dumps(record) + "\n"
            continue
        fields = [row.pdq, "" if row.quality is None else str(row.quality)]
        if row.note is not None:
            fields.append(one_line(row.note) or "")
        while fields[-1] == "":
            fields.pop()
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerow(fields)
        yield buffer.getvalue()

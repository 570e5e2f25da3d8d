"""Hash banks: named lists of PDQ hashes with a label, curated by an operator (HMA's banks). An
`adult` bank's match is adult; a `safe` bank's (HMA's "negative bank") keeps an automatic adult
verdict from standing: it goes to a human, never straight to safe. A bank's signals are rows of
match_signals (owner "bank:<name>"), so every worker's index holds them like a decision's hashes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.exc import IntegrityError

from nsfw.errors import BankExists, InvalidBank, NotFound, TooManySignals
from nsfw.matching import store
from nsfw.matching.index import Index
from nsfw.matching.store import Follower, Hashed
from nsfw.matching.tables import banks, signals
from nsfw.store.engine import reading, transaction_lock

LABELS = ("adult", "safe")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # never "." or "..": a path segment
EXPORT_BATCH = 5000
ADD_CHUNK = 5000
# Signals one request may add (about 6.5 MB of CSV): a bigger list is sent in parts, so that one
# import holds SQLite's write lock for a second or so, not for longer than a decision waits for it.
MAX_SIGNALS = 100_000

# Decided items that a list of hashes matches (the review queue's, given by its install):
# (hashes, label of the items, distance) -> [{"id", "distance"}].
Rereview = Callable[[Sequence[str], str, int], list[dict[str, Any]]]


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class Banks:
    """The banks over one engine."""

    def __init__(self, engine: Engine, default_distance: int) -> None:
        self.engine = engine
        self.default_distance = default_distance

    def create(self, body: object, by: str) -> dict[str, Any]:
        if not isinstance(body, dict) or set(body) - {"name", "label", "distance"}:
            raise InvalidBank("the body must be JSON with name, label and, if any, distance")
        name, label, distance = body.get("name"), body.get("label"), body.get("distance")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidBank(f"name {name!r}")
        if label not in LABELS:
            raise InvalidBank(f"label {label!r}")
        if distance is not None and (type(distance) is not int or not 0 <= distance <= 128):
            raise InvalidBank(f"distance {distance!r}")
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    insert(banks).values(name=name, label=label, distance=distance, created=time.time(), created_by=by)
                )
        except IntegrityError:
            raise BankExists(name) from None
        return self.get(name)

    def list(self) -> list[dict[str, Any]]:
        with reading(self.engine) as connection:
            counts = dict(
                connection.execute(
                    select(signals.c.owner, func.count())
                    .where(signals.c.owner.startswith(store.BANK_PREFIX, autoescape=True))
                    .group_by(signals.c.owner)
                ).all()
            )
            rows = connection.execute(select(banks).order_by(banks.c.name)).all()
        return [self._bank(row, counts.get(store.bank_owner(row.name), 0)) for row in rows]

    def get(self, name: str) -> dict[str, Any]:
        with reading(self.engine) as connection:
            row = connection.execute(select(banks).where(banks.c.name == name)).first()
            if row is None:
                raise NotFound(f"no bank {name!r}")
            count = connection.execute(
                select(func.count()).where(signals.c.owner == store.bank_owner(name))
            ).scalar_one()
        return self._bank(row, count)

    def label_of(self, name: str) -> tuple[str, int]:
        """A bank's label and the distance its matches take."""
        bank = self.get(name)
        return bank["label"], bank["distance"] if bank["distance"] is not None else self.default_distance

    def delete(self, name: str) -> None:
        now = time.time()
        with self.engine.begin() as connection:
            self._locked(connection, name)
            if not connection.execute(delete(banks).where(banks.c.name == name)).rowcount:
                raise NotFound(f"no bank {name!r}")
            store.forget(connection, now, store.bank_owner(name))

    def add(self, name: str, hashes: Iterable[Hashed], by: str, keep: int = 0) -> Added:
        """Add signals to a bank, all or none (one transaction: a bad line met half-way rolls back
        what came before), read and written ADD_CHUNK at a time so that memory stays flat; a hash the
        bank holds is kept as it was. At most MAX_SIGNALS per call (TooManySignals). `keep`: the first
        so many hashes are handed back (what the caller looks up next)."""
        owner = store.bank_owner(name)
        now = time.time()
        received = added = 0
        first: list[tuple[str, int | None]] = []
        with self.engine.begin() as connection:
            label = self._locked(connection, name)
            for chunk in _chunks(hashes, ADD_CHUNK):
                received += len(chunk)
                if received > MAX_SIGNALS:
                    raise TooManySignals(f"more than {MAX_SIGNALS} signals in one request")
                first.extend((h.pdq, h.quality) for h in chunk[: max(0, keep - len(first))])
                added += store.add_new(connection, now, owner, label, chunk, by)
            if added:
                store.log_change(connection, now, owner)
        return Added(received, added, first, label)

    def export(self, name: str, fmt: str) -> Iterator[str]:
        """A bank's signals as lines, in the order they were added (store.export_lines)."""
        self.get(name)  # 404 before any line
        last = 0
        while True:
            with reading(self.engine) as connection:
                rows = connection.execute(
                    select(signals.c.id, signals.c.pdq, signals.c.quality, signals.c.note)
                    .where(signals.c.owner == store.bank_owner(name), signals.c.id > last)
                    .order_by(signals.c.id)
                    .limit(EXPORT_BATCH)
                ).all()
            if not rows:
                return
            yield from store.export_lines(rows, fmt)
            last = rows[-1].id

    @staticmethod
    def _locked(connection: Any, name: str) -> str:
        """The bank's label, with the bank held for this transaction: its imports and its deletion
        take turns (PostgreSQL: an advisory lock on its name; SQLite's writers take turns anyway), so
        two imports of one hash never collide on the unique index, and no import outlives a deletion
        with signals of a bank that is gone."""
        transaction_lock(connection, f"nsfw-bank:{name}")
        label = connection.execute(select(banks.c.label).where(banks.c.name == name)).scalar()
        if label is None:
            raise NotFound(f"no bank {name!r}")
        return str(label)

    @staticmethod
    def _bank(row: Any, count: int) -> dict[str, Any]:
        return {
            "name": row.name,
            "label": row.label,
            "distance": row.distance,
            "signals": int(count),
            "created": _iso(row.created),
            "created_by": row.created_by,
        }


@dataclass(frozen=True)
class Added:
    """What an import did: hashes received, new to the bank, and the first few (for a rereview)."""

    received: int
    added: int
    first: list[tuple[str, int | None]]  # (pdq, quality)
    label: str  # the bank's, as the import held it


def _chunks(items: Iterable[Hashed], size: int) -> Iterator[list[Hashed]]:
    chunk: list[Hashed] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class Matcher:
    """The matcher in one worker (app.extensions["nsfw.matcher"]): its index and follower, the banks,
    and the review queue's search for decided items a new adult signal contradicts."""

    index: Index
    follower: Follower
    banks: Banks
    rereview: Rereview

"""The review queue's rules: enqueue, remember, claim, decide, delete, list, export, prune. Plain
functions over the store (nsfw/review/store.py), no Flask.

An item is a small state machine, pending -> decided, every transition in the audit log with who and
when (Discourse's reviewables). A decision is one conditional UPDATE (`... WHERE status = 'pending'`):
of 16 moderators racing, the database lets exactly one through and the others find it decided
(409). The decision's webhook message is written to the outbox in the same transaction, so a
crash between the two loses neither (nsfw/review/webhooks.py sends it). Once decided, the image's
sha256 is remembered: the same bytes asked again get the human's label as their verdict.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from nsfw.errors import AlreadyDecided, Claimed, InvalidLabel, NotDecided, NotFound
from nsfw.review.store import audit, outbox, refs, reviews

LABELS = ("adult", "safe")
EVENT_DECIDED = "review.decided"
EVENT_REVERTED = "review.reverted"
MAX_PAGE = 100


@dataclass(frozen=True)
class Decision:
    """A human's decision on an image, as a remembered verdict."""

    review_id: str
    label: str
    moderator: str
    decided: float

    @property
    def reason(self) -> str:
        return f"human review {self.review_id} ({self.moderator}, {iso(self.decided)})"


@dataclass(frozen=True)
class Candidate:
    """What the prediction path hands over for an image that may need a human."""

    sha256: str
    kind: str  # unknown | audit
    ref: str | None
    key_name: str
    source_url: str | None
    model: str
    model_version: str
    scores: Mapping[str, float]
    verdict: str
    reason: str


def iso(seconds: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds."""
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class ReviewQueue:
    """The queue over one engine; `clock` is injectable for the tests of leases and retention."""

    def __init__(self, engine: Engine, *, lease: float, webhooks: bool, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.lease = lease
        self.webhooks = webhooks
        self.clock = clock

    # The prediction path.

    def remembered(self, sha256: str) -> Decision | None:
        """The latest human decision on these bytes, if any."""
        query = (
            select(reviews.c.id, reviews.c.label, reviews.c.decided_by, reviews.c.decided)
            .where(reviews.c.sha256 == sha256, reviews.c.status == "decided")
            .order_by(reviews.c.decided.desc())
            .limit(1)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return Decision(row.id, row.label, row.decided_by, row.decided) if row else None

    def enqueue(self, candidate: Candidate, thumbnail: Callable[[], bytes | None]) -> str:
        """The pending item for these bytes: the one already pending (the ref joins it), or a new one
        with its thumbnail (made only then). Returns its id."""
        now = self.clock()
        for _ in range(3):  # a concurrent enqueue of the same bytes may win the unique index once
            with self.engine.begin() as connection:
                found = connection.execute(
                    select(reviews.c.id).where(reviews.c.sha256 == candidate.sha256, reviews.c.status == "pending")
                ).first()
                if found is not None:
                    self._add_ref(connection, found.id, candidate.ref, now)
                    return str(found.id)
            picture = thumbnail()
            review_id = _new_id("rv")
            try:
                with self.engine.begin() as connection:
                    connection.execute(
                        insert(reviews).values(
                            id=review_id,
                            created=now,
                            kind=candidate.kind,
                            status="pending",
                            sha256=candidate.sha256,
                            key_name=candidate.key_name,
                            source_url=candidate.source_url,
                            model=candidate.model,
                            model_version=candidate.model_version,
                            scores=json.dumps(dict(candidate.scores)),
                            verdict=candidate.verdict,
                            reason=candidate.reason,
                            thumbnail=picture,
                        )
                    )
                    self._add_ref(connection, review_id, candidate.ref, now)
                return review_id
            except IntegrityError:
                continue  # the other enqueue's item exists now: join it
        raise RuntimeError(f"could not enqueue {candidate.sha256}")

    @staticmethod
    def _add_ref(connection: Any, review_id: str, ref: str | None, now: float) -> None:
        if ref is None:
            return
        known = connection.execute(select(refs.c.ref).where(refs.c.review_id == review_id, refs.c.ref == ref)).first()
        if known is None:
            connection.execute(insert(refs).values(review_id=review_id, ref=ref, added=now))

    # The API.

    def page(self, status: str, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Items of a status, oldest first (pending: the next to review first), `limit` at a time;
        the cursor is the last item's (created, id), opaque to the client."""
        query = select(reviews).where(reviews.c.status == status)
        if cursor:
            created, last_id = _read_cursor(cursor)
            query = query.where(
                or_(reviews.c.created > created, and_(reviews.c.created == created, reviews.c.id > last_id))
            )
        query = query.order_by(reviews.c.created, reviews.c.id).limit(limit + 1)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
            items = [self._item(connection, row) for row in rows[:limit]]
        following = _make_cursor(rows[limit - 1].created, rows[limit - 1].id) if len(rows) > limit else None
        return items, following

    def get(self, review_id: str) -> dict[str, Any]:
        with self.engine.connect() as connection:
            row = connection.execute(select(reviews).where(reviews.c.id == review_id)).first()
            if row is None:
                raise NotFound(review_id)
            return self._item(connection, row)

    def recent_decisions(self, limit: int = MAX_PAGE) -> list[dict[str, Any]]:
        """Decided items, newest decision first (the history page)."""
        query = select(reviews).where(reviews.c.status == "decided").order_by(reviews.c.decided.desc()).limit(limit)
        with self.engine.connect() as connection:
            return [self._item(connection, row) for row in connection.execute(query).all()]

    def decided_scores(self) -> list[tuple[str, dict[str, float], str]]:
        """(model, scores, human label) of every decided item: what the insights page learns from."""
        query = select(reviews.c.model, reviews.c.scores, reviews.c.label).where(reviews.c.status == "decided")
        with self.engine.connect() as connection:
            return [(row.model, json.loads(row.scores), row.label) for row in connection.execute(query)]

    def kinds_decided(self) -> dict[str, int]:
        """How many decided items of each kind (unknown, audit) there are."""
        query = select(reviews.c.kind, func.count()).where(reviews.c.status == "decided").group_by(reviews.c.kind)
        with self.engine.connect() as connection:
            return {row[0]: int(row[1]) for row in connection.execute(query)}

    def thumbnail(self, review_id: str) -> bytes | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(reviews.c.thumbnail).where(reviews.c.id == review_id)).first()
        if row is None:
            raise NotFound(review_id)
        return bytes(row.thumbnail) if row.thumbnail is not None else None

    def claim(self, review_id: str, moderator: str) -> dict[str, Any]:
        """A lease of `lease` seconds on a pending item; 409 while another moderator's lease runs."""
        now = self.clock()
        with self.engine.begin() as connection:
            claimed = connection.execute(
                update(reviews)
                .where(_open_to(review_id, moderator, now))
                .values(claimed_by=moderator, claim_until=now + self.lease)
            ).rowcount
            if not claimed:
                self._refuse(connection, review_id, moderator, now)
            self._audit(connection, now, moderator, "claimed", review_id, {"until": now + self.lease})
        return self.get(review_id)

    def decide(self, review_id: str, moderator: str, label: object, note: object = None) -> dict[str, Any]:
        """Decide a pending item, once: the first decision wins, any later one is 409 already_decided;
        an item another moderator holds a running claim on is 409 claimed."""
        if label not in LABELS:
            raise InvalidLabel(f"label {label!r}")
        if note is not None and not isinstance(note, str):
            raise InvalidLabel("note is not a string")
        note = note[:2000] if note else None
        now = self.clock()
        with self.engine.begin() as connection:
            decided = connection.execute(
                update(reviews)
                .where(_open_to(review_id, moderator, now))
                .values(status="decided", label=label, decided_by=moderator, decided=now, note=note)
            ).rowcount
            if not decided:
                self._refuse(connection, review_id, moderator, now)
            self._audit(connection, now, moderator, "decided", review_id, {"label": label, "note": note})
            item = self._item(connection, connection.execute(select(reviews).where(reviews.c.id == review_id)).one())
            if self.webhooks:
                self._outbox(connection, now, EVENT_DECIDED, item)
        return item

    def revert(self, review_id: str, moderator: str) -> dict[str, Any]:
        """Undo a decision: the item is pending again (its memory gone), the audit log keeps both,
        and the client app hears `review.reverted` with the label it had."""
        now = self.clock()
        with self.engine.begin() as connection:
            row = connection.execute(select(reviews).where(reviews.c.id == review_id)).first()
            if row is None:
                raise NotFound(review_id)
            if row.status != "decided":
                raise NotDecided(review_id)
            before = self._item(connection, row)
            connection.execute(
                update(reviews)
                .where(reviews.c.id == review_id, reviews.c.status == "decided")
                .values(
                    status="pending",
                    label=None,
                    decided=None,
                    decided_by=None,
                    note=None,
                    claimed_by=None,
                    claim_until=None,
                )
            )
            self._audit(connection, now, moderator, "reverted", review_id, {"label": before["label"]})
            if self.webhooks:
                self._outbox(connection, now, EVENT_REVERTED, before | {"reverted_by": moderator})
            item = self._item(connection, connection.execute(select(reviews).where(reviews.c.id == review_id)).one())
        return item

    def delete(self, review_id: str, moderator: str) -> None:
        now = self.clock()
        with self.engine.begin() as connection:
            row = connection.execute(select(reviews.c.status, reviews.c.label).where(reviews.c.id == review_id)).first()
            if row is None:
                raise NotFound(review_id)
            connection.execute(delete(refs).where(refs.c.review_id == review_id))
            connection.execute(delete(reviews).where(reviews.c.id == review_id))
            self._audit(connection, now, moderator, "deleted", review_id, {"status": row.status, "label": row.label})

    def audit_log(self, review_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            rows = connection.execute(select(audit).where(audit.c.review_id == review_id).order_by(audit.c.id)).all()
        return [
            {"at": iso(row.at), "actor": row.actor, "action": row.action, "detail": json.loads(row.detail)}
            for row in rows
        ]

    def export(self, fmt: str) -> Iterator[str]:
        """Every decided item, oldest decision first: JSON lines or CSV (a labelled data set)."""
        query = select(reviews).where(reviews.c.status == "decided").order_by(reviews.c.decided, reviews.c.id)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
            items = [self._item(connection, row) for row in rows]
        columns = ("id", "sha256", "model", "model_version", "verdict", "label", "decided_by", "created", "decided")
        if fmt == "jsonl":
            for item in items:
                yield json.dumps({name: item[name] for name in (*columns, "kind", "scores", "refs", "note")}) + "\n"
            return
        classes = sorted({name for item in items for name in item["scores"]})
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([*columns, *classes])
        for item in items:
            writer.writerow([*(item[name] for name in columns), *(item["scores"].get(name, "") for name in classes)])
        yield out.getvalue()

    def prune(self, retention_days: int) -> int:
        """Drop the thumbnails of items decided more than retention_days ago; their scores, labels and
        hashes stay (they are the memory). Pending items are never touched."""
        before = self.clock() - retention_days * 86400
        with self.engine.begin() as connection:
            return int(
                connection.execute(
                    update(reviews)
                    .where(reviews.c.status == "decided", reviews.c.decided < before, reviews.c.thumbnail.is_not(None))
                    .values(thumbnail=None)
                ).rowcount
            )

    def depth(self) -> tuple[int, float | None]:
        """Pending items, and the age in seconds of the oldest."""
        with self.engine.connect() as connection:
            count, oldest = connection.execute(
                select(func.count(), func.min(reviews.c.created)).where(reviews.c.status == "pending")
            ).one()
        return int(count), (self.clock() - oldest) if oldest is not None else None

    def deliveries(self, status: str | None = None, limit: int = MAX_PAGE) -> list[dict[str, Any]]:
        """The webhook outbox, newest first: what was sent, what waits, what failed for good."""
        query = select(outbox).order_by(outbox.c.created.desc()).limit(limit)
        if status:
            query = query.where(outbox.c.status == status)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        return [
            {
                "id": row.id,
                "review_id": row.review_id,
                "event": row.event,
                "status": row.status,
                "attempts": row.attempts,
                "next_attempt": iso(row.next_at) if row.status == "pending" else None,
                "last_error": row.last_error,
                "created": iso(row.created),
                "delivered": iso(row.delivered),
            }
            for row in rows
        ]

    # Inside.

    def _refuse(self, connection: Any, review_id: str, moderator: str, now: float) -> None:
        row = connection.execute(
            select(reviews.c.status, reviews.c.claimed_by, reviews.c.claim_until).where(reviews.c.id == review_id)
        ).first()
        if row is None:
            raise NotFound(review_id)
        if row.status == "decided":
            raise AlreadyDecided(review_id)
        raise Claimed(f"{review_id} claimed by {row.claimed_by} until {iso(row.claim_until)}")

    @staticmethod
    def _audit(connection: Any, now: float, actor: str, action: str, review_id: str, detail: dict[str, Any]) -> None:
        connection.execute(
            insert(audit).values(at=now, actor=actor, action=action, review_id=review_id, detail=json.dumps(detail))
        )

    @staticmethod
    def _outbox(connection: Any, now: float, event_type: str, item: dict[str, Any]) -> None:
        message_id = _new_id("msg")
        payload = {
            "type": event_type,
            "timestamp": iso(now),
            "data": {name: item[name] for name in ("id", "refs", "label", "decided_by", "decided", "scores", "model")}
            | {"moderator": item["decided_by"], "model_version": item["model_version"], "sha256": item["sha256"]}
            | ({"reverted_by": item["reverted_by"]} if "reverted_by" in item else {}),
        }
        connection.execute(
            insert(outbox).values(
                id=message_id,
                review_id=item["id"],
                event=event_type,
                payload=json.dumps(payload, separators=(",", ":")),
                status="pending",
                attempts=0,
                next_at=now,
                created=now,
            )
        )

    def _item(self, connection: Any, row: Any) -> dict[str, Any]:
        item_refs = connection.execute(select(refs.c.ref).where(refs.c.review_id == row.id).order_by(refs.c.added))
        now = self.clock()
        claimed = row.claimed_by if row.claim_until is not None and row.claim_until >= now else None
        return {
            "id": row.id,
            "status": row.status,
            "kind": row.kind,
            "refs": [r.ref for r in item_refs],
            "sha256": row.sha256,
            "key": row.key_name,
            "source_url": row.source_url,
            "model": row.model,
            "model_version": row.model_version,
            "scores": json.loads(row.scores),
            "verdict": row.verdict,
            "reason": row.reason,
            "created": iso(row.created),
            "claimed_by": claimed if row.status == "pending" else None,
            "claimed_until": iso(row.claim_until) if claimed and row.status == "pending" else None,
            "decided": iso(row.decided),
            "label": row.label,
            "decided_by": row.decided_by,
            "note": row.note,
            "has_thumbnail": row.thumbnail is not None,
        }


def _open_to(review_id: str, moderator: str, now: float) -> Any:
    """The item is pending and no other moderator's claim on it is running."""
    return and_(
        reviews.c.id == review_id,
        reviews.c.status == "pending",
        or_(reviews.c.claimed_by.is_(None), reviews.c.claimed_by == moderator, reviews.c.claim_until < now),
    )


def _make_cursor(created: float, review_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created, review_id]).encode()).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[float, str]:
    from nsfw.errors import BadRequest

    try:
        created, review_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return float(created), str(review_id)
    except (ValueError, TypeError) as exc:
        raise BadRequest(f"cursor {cursor!r}: {exc}") from None

"""The review queue's rules: enqueue, remember, claim, decide, revert, delete, list, export, retain.
Plain functions over the store (the tables: nsfw/review/tables.py), no Flask.

An item is a small state machine, pending -> decided (or expired, past NSFW_REVIEW_PENDING_DAYS),
every transition in the audit log with who and when (Discourse's reviewables). A transition is one
conditional UPDATE whose row count is checked (`... WHERE status = 'pending'`): of 16 moderators
racing, the database lets exactly one through and the others find it decided (409); of two undos,
one wins and the other finds nothing to undo. The transition's webhook message is written to the
outbox in the same transaction, so a crash between the two loses neither (nsfw/review/webhooks.py
sends it). Once decided, the image's sha256 is remembered: the same bytes asked again get the
human's label as their verdict.

What one predict key may do to the queue is bounded: at most NSFW_REVIEW_MAX_PENDING_PER_KEY pending
items of its own, at most NSFW_REVIEW_MAX_REFS refs of its own on an item (so it cannot crowd out
another key's), every ref stored with the key that sent it (a client app tells its own refs apart in
the webhook), and a remembered decision names no moderator to a predict key, nor an item that key had
no part in.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Engine, and_, delete, exists, func, insert, or_, select, true, update
from sqlalchemy.exc import IntegrityError

from nsfw.errors import (
    AlreadyAppealed,
    AlreadyDecided,
    Claimed,
    InvalidAppeal,
    InvalidLabel,
    LeadOnly,
    NotDecided,
    NotFound,
    PendingTwin,
    ReviewQueueFull,
    SameModerator,
    TooManyAppeals,
)
from nsfw.imaging.thumbnail import Picture
from nsfw.matching import store as matching
from nsfw.matching.pdq import TURNS, FrameHashes, nearest_of, packed
from nsfw.model.specs import MODELS
from nsfw.review.insights import adult_score
from nsfw.review.tables import audit, frames, hashes, outbox, refs, reviews
from nsfw.store.engine import reading, transaction_lock

LABELS = ("adult", "safe")
# The ref that records a key's part in an item it joined without a ref of its own (never shown).
JOINED = ""
EVENT_DECIDED = "review.decided"
EVENT_REVERTED = "review.reverted"
EVENT_DELETED = "review.deleted"
EVENT_EXPIRED = "review.expired"
EVENT_APPEAL_DECIDED = "review.appeal_decided"
REVEALED = "revealed"  # the audit action of a moderator revealing an item (nsfw/review/wellbeing.py counts them)
MAX_PAGE = 100
# Rows one retention pass changes per kind, so that its transactions stay short (it runs hourly).
RETENTION_BATCH = 500
RETENTION_ACTOR = "retention"


@dataclass(frozen=True)
class Decision:
    """A human's decision on an image, as a remembered verdict; `review_id` only when the asking key
    created the item or sent a ref to it (another key learns nothing of whose traffic it was)."""

    label: str
    decided: float
    review_id: str | None

    @property
    def reason(self) -> str:
        return f"human review ({iso(self.decided)})"


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
    # The frames the model judged: the image's frame count, each classified frame's index and scores
    # ([{"index", "scores"}]), and the index of the one that decided the verdict.
    frame_count: int = 1
    frames: Sequence[Mapping[str, Any]] = field(default_factory=list)
    chosen_frame: int = 0
    # Each classified frame's PDQ hashes, in the frames' order (none: not hashed).
    hashes: Sequence[FrameHashes] = ()
    # The deciding frame's embedding (float32 little-endian), kept for the adapters' training.
    embedding: bytes | None = None


@dataclass(frozen=True)
class Queued:
    """The pending item an image joined or made, and whether the request's ref was kept."""

    review_id: str
    ref_kept: bool = True


# The pictures of an item: each classified frame's thumbnail and preview by its index in the animation
# (one entry for a still image), made only when a new item is made; None when they cannot be made.
Pictures = Callable[[], Mapping[int, Picture] | None]
T = TypeVar("T")
# How a store call is run: at once, or within a deadline (the prediction path's StoreGate).
Runner = Callable[[Callable[[], T]], T]


def _now(call: Callable[[], T]) -> T:
    return call()


def copied_from(detail: str) -> str | None:
    """The item a `decided` audit entry's decision was copied from (retroaction: a near-duplicate's
    decision, which no one looked at); None for a human's own decision."""
    match = json.loads(detail).get("match")
    source = match.get("review") if isinstance(match, dict) else None
    return source if isinstance(source, str) else None


def iso(seconds: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC with milliseconds."""
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


def without_query(url: str | None) -> str | None:
    """A source URL as it is stored: no query and no fragment, where signed URLs keep their signature."""
    if url is None:
        return None
    try:
        split = urlsplit(url)
    except ValueError:
        return None
    return urlunsplit(split._replace(query="", fragment=""))


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


class ReviewQueue:
    """The queue over one engine; `clock` is injectable for the tests of leases and retention."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease: float,
        webhooks: bool,
        clock: Callable[[], float] = time.time,
        max_pending_per_key: int = 1000,
        max_refs: int = 20,
        match_distance: int = 31,
        match_min_quality: int = 50,
        match: bool = True,
        reasons: Sequence[str] = (),
    ) -> None:
        self.reasons = tuple(reasons)  # NSFW_REVIEW_REASONS: the reason codes a decision may give
        self.match = match  # NSFW_MATCH: decisions remembered by their hashes, and retroaction
        self.engine = engine
        self.match_distance = match_distance
        self.match_min_quality = match_min_quality
        self.lease = lease
        self.webhooks = webhooks
        self.clock = clock
        self.max_pending_per_key = max_pending_per_key
        self.max_refs = max_refs

    # The prediction path.

    def remembered(self, sha256: str, key_name: str = "-") -> Decision | None:
        """The latest human decision on these bytes, if any; its item's id only for a key that created
        the item or sent a ref to it."""
        return self._decision(key_name, reviews.c.sha256 == sha256, order_by=reviews.c.decided.desc())

    def decision_of(self, review_id: str, key_name: str = "-") -> Decision | None:
        """A decided item's decision as the store has it now (a near-duplicate match, checked: the
        index may be a second behind an undo); its id only for a key that had a part in it."""
        return self._decision(key_name, reviews.c.id == review_id)

    def _decision(self, key_name: str, which: Any, order_by: Any = None) -> Decision | None:
        """The first decided item `which` picks, as a Decision for this key (its id only when the key
        had a part in it)."""
        query = select(reviews.c.id, reviews.c.label, reviews.c.decided, _involving(key_name).label("involved"))
        query = query.where(which, reviews.c.status == "decided")
        if order_by is not None:
            query = query.order_by(order_by)
        with reading(self.engine) as connection:
            row = connection.execute(query.limit(1)).first()
        if row is None:
            return None
        return Decision(row.label, row.decided, row.id if row.involved else None)

    def decided_near(self, pdqs: Sequence[str], label: str, distance: int) -> list[dict[str, Any]]:
        """Items decided `label` that any of these hashes matches (any frame, any of its eight
        dihedral hashes, within `distance`), nearest first: [{"id", "distance"}]. What a new adult
        bank signal contradicts (nsfw/matching/views.py)."""
        with reading(self.engine) as connection:
            rows = connection.execute(
                select(hashes.c.review_id, hashes.c.pdq)
                .join(reviews, reviews.c.id == hashes.c.review_id)
                .where(
                    reviews.c.status == "decided",
                    reviews.c.label == label,
                    hashes.c.variant < len(_DIHEDRAL),
                    hashes.c.quality >= self.match_min_quality,
                )
            ).all()
        if not rows or not pdqs:
            return []
        best = nearest_of(packed([r.pdq for r in rows]), pdqs)
        nearest: dict[str, int] = {}
        for row, value in zip(rows, best.tolist(), strict=True):
            if value <= distance and value < nearest.get(row.review_id, 257):
                nearest[row.review_id] = value
        return [
            {"id": review_id, "distance": d} for review_id, d in sorted(nearest.items(), key=lambda kv: (kv[1], kv[0]))
        ]

    def enqueue(self, candidate: Candidate, pictures: Pictures, run: Runner = _now) -> Queued:
        """The pending item for these bytes: the one already pending (the ref joins it, while the key
        has room for refs there), or a new one with its pictures (made only then, outside any
        transaction). A key with max_pending_per_key pending items of its own makes no new item and
        joins none it had no part in (ReviewQueueFull, the same answer for both: whether another key
        has these bytes pending is not told). The cap and the refs are checked and written in one
        transaction each, which SQLite serialises (BEGIN IMMEDIATE) and PostgreSQL by a lock on the
        item's row, or on the key (an advisory lock). Each transaction goes through `run` (the
        prediction path's bound on a store that does not answer); the pictures are made between them,
        in no transaction."""
        now = self.clock()
        for _ in range(3):  # a concurrent enqueue of the same bytes may win the unique index once
            joined = run(lambda: self._join(candidate, now))
            if joined is not None:
                return joined
            made = pictures() or {}
            try:
                return run(lambda: self._insert(candidate, made, now))  # noqa: B023 - called at once
            except IntegrityError:
                continue  # the other enqueue's item exists now: join it
        raise RuntimeError(f"could not enqueue {candidate.sha256}")

    def _join(self, candidate: Candidate, now: float) -> Queued | None:
        """The pending item for these bytes, with the ref added; None when there is none (and the key
        has room for a new one)."""
        with self.engine.begin() as connection:
            found = connection.execute(
                select(reviews.c.id, reviews.c.key_name)
                .where(reviews.c.sha256 == candidate.sha256, reviews.c.status == "pending")
                .with_for_update()
            ).first()
            if found is not None:
                involved = found.key_name == candidate.key_name or self._has_refs(
                    connection, found.id, candidate.key_name
                )
                if not involved:
                    self._check_room(connection, candidate.key_name)
                kept = self._add_ref(connection, found.id, candidate.key_name, candidate.ref, now, involved=involved)
                return Queued(str(found.id), kept)
            self._check_room(connection, candidate.key_name)
        return None

    def _insert(self, candidate: Candidate, made: Mapping[int, Picture], now: float) -> Queued:
        review_id = _new_id("rv")
        chosen = made.get(candidate.chosen_frame, next(iter(made.values()), None))
        with self.engine.begin() as connection:
            self._lock_key(connection, candidate.key_name)
            self._check_room(connection, candidate.key_name)  # again, now that no one else can add
            connection.execute(
                insert(reviews).values(
                    id=review_id,
                    created=now,
                    pending_since=now,
                    kind=candidate.kind,
                    status="pending",
                    sha256=candidate.sha256,
                    key_name=candidate.key_name,
                    source_url=without_query(candidate.source_url),
                    model=candidate.model,
                    model_version=candidate.model_version,
                    scores=json.dumps(dict(candidate.scores)),
                    verdict=candidate.verdict,
                    reason=candidate.reason,
                    thumbnail=chosen.thumbnail if chosen else None,
                    # A preview that is the thumbnail again (a small image) is not stored twice.
                    preview=chosen.preview if chosen and chosen.preview != chosen.thumbnail else None,
                    width=chosen.width if chosen else None,
                    height=chosen.height if chosen else None,
                    adult=adult_score(candidate.model, candidate.scores),
                    frame_count=candidate.frame_count,
                    frames=json.dumps(list(candidate.frames)) if _strip_kept(candidate) else None,
                    chosen_frame=candidate.chosen_frame,
                    embedding=candidate.embedding,
                )
            )
            if _strip_kept(candidate):
                strip = [
                    {"review_id": review_id, "position": n, "frame_index": index, "thumbnail": made[index].thumbnail}
                    for n, index in enumerate(sorted(made))
                ]
                if strip:
                    connection.execute(insert(frames), strip)
            hashed = [
                {"review_id": review_id, "position": position, "variant": variant, "pdq": pdq, "quality": frame.quality}
                for position, frame in enumerate(candidate.hashes)
                for variant, pdq in (*enumerate(frame.dihedral), *enumerate(frame.crops, len(_DIHEDRAL)))
            ]
            if hashed:
                connection.execute(insert(hashes), hashed)
            self._add_ref(connection, review_id, candidate.key_name, candidate.ref, now, involved=True)
        return Queued(review_id)

    def _check_room(self, connection: Any, key_name: str) -> None:
        """ReviewQueueFull when the key has a part in max_pending_per_key pending items: made by it, or
        joined (a ref, or the empty one that records a join without one). A join costs the room a new
        item would, so what a key is answered never depends on what others have pending."""
        if not self.max_pending_per_key:
            return
        mine = connection.execute(
            select(func.count()).where(reviews.c.status == "pending", _involving(key_name))
        ).scalar_one()
        if mine >= self.max_pending_per_key:
            raise ReviewQueueFull(f"{key_name} has a part in {mine} pending items")

    @staticmethod
    def _lock_key(connection: Any, key_name: str) -> None:
        """PostgreSQL: one new item of a key at a time (its cap is counted and written in turn)."""
        transaction_lock(connection, f"nsfw-key:{key_name}")

    @staticmethod
    def _has_refs(connection: Any, review_id: str, key_name: str) -> bool:
        """Whether the key has any ref on the item, JOINED included."""
        return (
            connection.execute(
                select(refs.c.ref).where(refs.c.review_id == review_id, refs.c.key_name == key_name).limit(1)
            ).first()
            is not None
        )

    def _add_ref(
        self, connection: Any, review_id: str, key_name: str, ref: str | None, now: float, *, involved: bool
    ) -> bool:
        """Attach (key, ref) to the item; False when this key already has max_refs refs on it (not
        kept: each key has its own room, so one key cannot crowd out another's refs). Without a ref,
        a key that had no part in the item (`involved`: made it, or has a ref on it) gets the empty
        ref, JOINED, which records its part (its room, and the item's id in a remembered decision)
        and is never shown. Called with the item's row locked (or SQLite's write lock held)."""
        if ref is None:
            if involved:
                return True
            ref = JOINED
        known = connection.execute(
            select(refs.c.ref).where(refs.c.review_id == review_id, refs.c.key_name == key_name, refs.c.ref == ref)
        ).first()
        if known is not None:
            return True
        count = connection.execute(
            select(func.count()).where(refs.c.review_id == review_id, refs.c.key_name == key_name, refs.c.ref != JOINED)
        ).scalar_one()
        if ref != JOINED and count >= self.max_refs:
            return False
        connection.execute(insert(refs).values(review_id=review_id, key_name=key_name, ref=ref, added=now))
        return True

    # The API.

    def page(
        self, status: str, limit: int, cursor: str | None, escalated: bool | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Items of a status, oldest first (pending: the next to review first), `limit` at a time;
        the cursor is the last item's (created, id), opaque to the client. `escalated`: only the
        escalated (the leads' view) or only the others (the moderators' queue); None: all."""
        return self._paged(and_(reviews.c.status == status, _escalated_is(escalated)), limit, cursor, newest=False)

    def search(self, condition: Any, limit: int, cursor: str | None) -> tuple[list[dict[str, Any]], str | None]:
        """Items a condition picks (nsfw/review/search.py), newest first, `limit` at a time; the cursor
        is the last item's (created, id)."""
        return self._paged(condition, limit, cursor, newest=True)

    def _paged(
        self, condition: Any, limit: int, cursor: str | None, *, newest: bool
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Items a condition picks, ordered by (created, id), oldest or newest first, `limit` after the
        cursor's item, and the cursor of the page that follows (None: none)."""
        query = select(*_ITEM_COLUMNS).where(condition)
        if cursor:
            created, last_id = _read_cursor(cursor)
            after = (
                or_(reviews.c.created < created, and_(reviews.c.created == created, reviews.c.id < last_id))
                if newest
                else or_(reviews.c.created > created, and_(reviews.c.created == created, reviews.c.id > last_id))
            )
            query = query.where(after)
        order = (reviews.c.created.desc(), reviews.c.id.desc()) if newest else (reviews.c.created, reviews.c.id)
        query = query.order_by(*order).limit(limit + 1)
        with reading(self.engine) as connection:
            rows = connection.execute(query).all()
            items = self._items(connection, rows[:limit])
        following = _make_cursor(rows[limit - 1].created, rows[limit - 1].id) if len(rows) > limit else None
        return items, following

    def get(self, review_id: str) -> dict[str, Any]:
        with reading(self.engine) as connection:
            return self._get(connection, review_id)

    def _get(self, connection: Any, review_id: str) -> dict[str, Any]:
        row = connection.execute(select(*_ITEM_COLUMNS).where(reviews.c.id == review_id)).first()
        if row is None:
            raise NotFound(review_id)
        return self._items(connection, [row])[0]

    def recent_decisions(self, limit: int = MAX_PAGE) -> list[dict[str, Any]]:
        """Decided items, newest decision first (the history page)."""
        query = (
            select(*_ITEM_COLUMNS).where(reviews.c.status == "decided").order_by(reviews.c.decided.desc()).limit(limit)
        )
        with reading(self.engine) as connection:
            return self._items(connection, connection.execute(query).all())

    def decided_scores(self) -> list[tuple[str, dict[str, float], str]]:
        """(model, scores, human label) of every decided item: what the insights page learns from."""
        query = select(reviews.c.model, reviews.c.scores, reviews.c.label).where(reviews.c.status == "decided")
        with reading(self.engine) as connection:
            return [(row.model, json.loads(row.scores), row.label) for row in connection.execute(query)]

    def kinds_decided(self) -> dict[str, int]:
        """How many decided items of each kind (unknown, audit) there are."""
        query = select(reviews.c.kind, func.count()).where(reviews.c.status == "decided").group_by(reviews.c.kind)
        with reading(self.engine) as connection:
            return {row[0]: int(row[1]) for row in connection.execute(query)}

    def thumbnail(self, review_id: str) -> bytes | None:
        with reading(self.engine) as connection:
            row = connection.execute(select(reviews.c.thumbnail).where(reviews.c.id == review_id)).first()
        if row is None:
            raise NotFound(review_id)
        return bytes(row.thumbnail) if row.thumbnail is not None else None

    def preview(self, review_id: str) -> bytes | None:
        """The picture a moderator opens full-size: the preview, or the thumbnail where the image was
        no larger; None past retention."""
        with reading(self.engine) as connection:
            row = connection.execute(
                select(reviews.c.preview, reviews.c.thumbnail).where(reviews.c.id == review_id)
            ).first()
        if row is None:
            raise NotFound(review_id)
        found = row.preview if row.preview is not None else row.thumbnail
        return bytes(found) if found is not None else None

    def frame_picture(self, review_id: str, position: int) -> bytes | None:
        """The picture of an animation's classified frame (its position in the strip); None when
        there is none (a still image, past retention, no such position)."""
        with reading(self.engine) as connection:
            if connection.execute(select(reviews.c.id).where(reviews.c.id == review_id)).first() is None:
                raise NotFound(review_id)
            row = connection.execute(
                select(frames.c.thumbnail).where(frames.c.review_id == review_id, frames.c.position == position)
            ).first()
        return bytes(row.thumbnail) if row is not None else None

    def revealed(self, review_id: str, moderator: str) -> None:
        """A moderator revealed this item's picture: audited, and counted against their exposure
        limits (nsfw/review/wellbeing.py); whoever holds its claim."""
        now = self.clock()
        with self.engine.begin() as connection:
            if connection.execute(select(reviews.c.id).where(reviews.c.id == review_id)).first() is None:
                raise NotFound(review_id)
            seen = connection.execute(
                select(audit.c.id).where(
                    audit.c.review_id == review_id, audit.c.actor == moderator, audit.c.action == REVEALED
                )
            ).first()
            if seen is None:  # once per moderator and item: the history stays readable, the count honest
                self._audit(connection, now, moderator, REVEALED, review_id, {})

    def revealed_by(self, moderator: str, ids: Sequence[str]) -> set[str]:
        """Which of these items this moderator has revealed (the audit log's `revealed` rows)."""
        if not ids:
            return set()
        with reading(self.engine) as connection:
            found = connection.execute(
                select(audit.c.review_id)
                .where(audit.c.actor == moderator, audit.c.action == REVEALED, audit.c.review_id.in_(list(ids)))
                .distinct()
            ).scalars()
            return set(found)

    def claim(self, review_id: str, moderator: str, *, lead: bool = True) -> dict[str, Any]:
        """A lease of `lease` seconds on a pending item; 409 while another moderator's lease runs. Only
        who may decide it may claim it (a lead an escalated item, another moderator than its decider
        an appeal): a claim must never keep it from them."""
        now = self.clock()
        with self.engine.begin() as connection:
            claimed = connection.execute(
                update(reviews)
                .where(_open_to(review_id, moderator, now), _allowed_to(moderator, lead))
                .values(claimed_by=moderator, claim_until=now + self.lease)
            ).rowcount
            if not claimed:
                self._refuse(connection, review_id, moderator, lead)
            self._audit(connection, now, moderator, "claimed", review_id, {"until": now + self.lease})
            return self._get(connection, review_id)

    def release(self, review_id: str, moderator: str) -> dict[str, Any]:
        """End this moderator's claim on an item (a skip, moving on, a closed tab): the item is open
        to the others at once. Nothing to release (no claim, another's, decided) is not an error: the
        page releases what it may no longer hold."""
        now = self.clock()
        with self.engine.begin() as connection:
            released = connection.execute(
                update(reviews)
                .where(reviews.c.id == review_id, reviews.c.status == "pending", reviews.c.claimed_by == moderator)
                .values(claimed_by=None, claim_until=None)
            ).rowcount
            if released:
                self._audit(connection, now, moderator, "released", review_id, {})
            return self._get(connection, review_id)

    def release_all(self, moderator: str) -> int:
        """End every claim of this moderator (sign-out); how many there were."""
        now = self.clock()
        with self.engine.begin() as connection:
            held = connection.execute(
                select(reviews.c.id).where(
                    reviews.c.status == "pending", reviews.c.claimed_by == moderator, reviews.c.claim_until >= now
                )
            ).scalars()
            ids = list(held)
            if ids:
                connection.execute(
                    update(reviews)
                    .where(reviews.c.id.in_(ids), reviews.c.claimed_by == moderator)
                    .values(claimed_by=None, claim_until=None)
                )
                for review_id in ids:
                    self._audit(connection, now, moderator, "released", review_id, {"signed_out": True})
        return len(ids)

    def decide(
        self,
        review_id: str,
        moderator: str,
        label: object,
        note: object = None,
        reason_code: object = None,
        *,
        lead: bool = True,
    ) -> dict[str, Any]:
        """Decide a pending item, once: the first decision wins, any later one is 409 already_decided;
        an item another moderator holds a running claim on is 409 claimed. A note is free text (up to
        2000 characters); a reason code is one of NSFW_REVIEW_REASONS. An escalated item is a lead's
        to decide (403 lead_only), and an appeal another moderator's than the one whose decision it
        contests (409 same_moderator). `lead`: the caller's role (a key with the review scope is the
        operator's, with a lead's rights)."""
        if label not in LABELS:
            raise InvalidLabel(f"label {label!r}")
        note = _free_text(note, "note")
        if reason_code is not None and reason_code != "" and reason_code not in self.reasons:
            allowed = ", ".join(self.reasons) or "(none: NSFW_REVIEW_REASONS is empty)"
            raise InvalidLabel(f"reason_code {str(reason_code)[:60]!r} is not one of {allowed}")
        code = str(reason_code) if reason_code else None
        now = self.clock()
        with self.engine.begin() as connection:
            decided = connection.execute(
                update(reviews)
                .where(_open_to(review_id, moderator, now), _allowed_to(moderator, lead))
                .values(status="decided", label=label, decided_by=moderator, decided=now, note=note, reason_code=code)
            ).rowcount
            if not decided:
                self._refuse(connection, review_id, moderator, lead)
            self._audit(
                connection,
                now,
                moderator,
                "decided",
                review_id,
                {"label": label, "note": note} | ({"reason_code": code} if code else {}),
            )
            if self.match:
                self._remember(connection, now, review_id, label, moderator)
            item = self._get(connection, review_id)
            if self.webhooks:
                appeal = item["appeal"]
                if appeal is not None:
                    self._outbox(connection, now, EVENT_APPEAL_DECIDED, item | {"appeal": _appeal_outcome(item)})
                else:
                    self._outbox(connection, now, EVENT_DECIDED, item)
        if not self.match:
            return item | {"near_duplicates": []}
        # Then its pending near-duplicates, each in a transaction of its own (one item's row at a
        # time, so two moderators deciding two copies at once never wait on each other's).
        decided = self._retroact(review_id, str(label), moderator, now, code)
        return item | {"near_duplicates": decided}

    def escalate(self, review_id: str, moderator: str, note: object = None) -> dict[str, Any]:
        """Hand a pending item to the leads: it leaves the moderators' queue for the leads' view, the
        moderator's claim ends, and the audit log keeps why."""
        text = _free_text(note, "note")
        now = self.clock()
        with self.engine.begin() as connection:
            done = connection.execute(
                update(reviews)
                .where(_open_to(review_id, moderator, now), _allowed_to(moderator, True), reviews.c.escalated.is_(None))
                .values(escalated=now, escalated_by=moderator, claimed_by=None, claim_until=None)
            ).rowcount
            if not done:
                row = connection.execute(select(reviews.c.escalated).where(reviews.c.id == review_id)).first()
                if row is not None and row.escalated is not None:
                    return self._get(connection, review_id)  # escalated already: nothing more to do
                self._refuse(connection, review_id, moderator, True)
            self._audit(connection, now, moderator, "escalated", review_id, {"note": text})
            return self._get(connection, review_id)

    def appeal(self, review_id: str, key_name: str, statement: object, ref: object = None) -> dict[str, Any]:
        """The client app's user contests a decision (the EU Digital Services Act's internal complaint
        handling, Art. 20): the decided item is pending again as an `appeal`, with the user's
        statement and the decision it contests, its memory suspended until the appeal is decided (as
        an undo does), and another moderator than the one who decided must decide it; the outcome
        goes out as review.appeal_decided. Only a key that sent the image (made the item or has a
        ref on it) may appeal; to any other key the item does not exist (404)."""
        if not isinstance(statement, str) or not 1 <= len(statement.strip()) <= 5000 or "\x00" in statement:
            raise InvalidAppeal("statement must be 1-5000 characters, without NUL")
        if ref is not None and (not isinstance(ref, str) or not ref or "\x00" in ref):
            raise InvalidAppeal("ref must be a non-empty string")
        now = self.clock()
        try:
            with self.engine.begin() as connection:
                row = connection.execute(
                    select(reviews.c.id).where(reviews.c.id == review_id, _involving(key_name)).with_for_update()
                ).first()
                if row is None:
                    raise NotFound(review_id)
                if (
                    ref is not None
                    and not connection.execute(
                        select(refs.c.ref).where(
                            refs.c.review_id == review_id, refs.c.key_name == key_name, refs.c.ref == ref
                        )
                    ).first()
                ):
                    raise InvalidAppeal(f"ref {ref[:60]!r} is not one of this key's refs on {review_id}")
                before = self._get(connection, review_id)
                if before["status"] != "decided":
                    raise NotDecided(f"{review_id} is {before['status']}")
                if before["appeal"] is not None:
                    raise AlreadyAppealed(f"{review_id} was appealed {before['appeal']['appealed']}")
                try:
                    self._lock_key(connection, key_name)  # as a new item does: two appeals count in turn
                    self._check_room(connection, key_name)  # an appeal is a pending item like any
                except ReviewQueueFull as full:
                    raise TooManyAppeals(full.detail) from None
                appealed = connection.execute(
                    update(reviews)
                    .where(reviews.c.id == review_id, reviews.c.status == "decided")
                    .values(
                        **_reopened(now),
                        appealed=now,
                        appeal_ref=ref,
                        appeal_statement=statement.strip(),
                        appealed_label=before["label"],
                        appealed_decider=before["decided_by"],
                    )
                ).rowcount
                if not appealed:
                    raise NotDecided(review_id)
                self._audit(
                    connection,
                    now,
                    key_name,
                    "appealed",
                    review_id,
                    {
                        "ref": ref,
                        "statement": statement.strip(),
                        "label": before["label"],
                        "decided_by": before["decided_by"],
                    },
                )
                matching.forget(connection, now, review_id)
                return self._get(connection, review_id)
        except IntegrityError:
            raise PendingTwin(f"{review_id}: the same bytes are pending as another item") from None

    def _remember(self, connection: Any, now: float, review_id: str, label: str, moderator: str) -> None:
        """A decision's hashes become the matcher's signals: each classified frame's, its seven flips'
        and turns' and its centre crops'; of an animation or video decided adult, the deciding frame's
        alone (a harmless frame of it must not make every copy of that frame adult)."""
        row = connection.execute(
            select(reviews.c.frames, reviews.c.chosen_frame).where(reviews.c.id == review_id)
        ).one()
        found = connection.execute(
            select(hashes.c.position, hashes.c.variant, hashes.c.pdq, hashes.c.quality).where(
                hashes.c.review_id == review_id
            )
        ).all()
        if label == "adult" and row.frames:
            indices = [frame["index"] for frame in json.loads(row.frames)]
            chosen = indices.index(row.chosen_frame) if row.chosen_frame in indices else 0
            found = [hashed for hashed in found if hashed.position == chosen]
        matching.remember(
            connection, now, review_id, label, [matching.Hashed(h.pdq, h.quality) for h in found], moderator
        )

    def _retroact(
        self, source: str, label: str, moderator: str, now: float, reason_code: str | None = None
    ) -> list[dict[str, Any]]:
        """Pending items within NSFW_MATCH_DISTANCE of a decision's remembered hashes, decided with it
        as a copy would be answered (adult: any frame of theirs matches; safe: every frame does, and a
        frame too flat to look up stands in the way), each audited with the match and sent as its own
        review.decided. Left alone: an item another moderator holds a running claim on, and audit
        samples (their point is a human's independent look). Returns [{"id", "distance"}]."""
        with reading(self.engine) as connection:
            remembered = connection.execute(
                select(matching.signals.c.pdq, matching.signals.c.quality).where(matching.signals.c.owner == source)
            ).all()
            targets = [r.pdq for r in remembered if (r.quality or 0) >= self.match_min_quality]
            if not targets:
                return []
            pending = connection.execute(
                select(hashes.c.review_id, hashes.c.position, hashes.c.pdq, hashes.c.quality)
                .join(reviews, reviews.c.id == hashes.c.review_id)
                .where(
                    *_RETROACTABLE,
                    reviews.c.id != source,
                    hashes.c.variant == 0,  # a frame's own hash, as a copy is looked up
                )
            ).all()
        # Each pending frame's nearest distance to any hash the decision remembered.
        best = nearest_of(packed([row.pdq for row in pending]), targets)
        nearest: dict[str, dict[int, int]] = {}
        for row, value in zip(pending, best.tolist(), strict=True):
            # A frame too flat to look up matches nothing (257: never within the distance).
            nearest.setdefault(row.review_id, {})[row.position] = (
                value if row.quality >= self.match_min_quality else 257
            )
        decided: list[dict[str, Any]] = []
        for review_id, frames_of in sorted(nearest.items()):
            near = [d for d in frames_of.values() if d <= self.match_distance]
            if not near or (label == "safe" and len(near) < len(frames_of)):
                continue
            distance = min(near)
            note = f"near-duplicate of {source}, PDQ distance {distance}"
            with self.engine.begin() as connection:
                done = connection.execute(
                    update(reviews)
                    .where(_open_to(review_id, moderator, now), *_RETROACTABLE)  # still, at this moment
                    .values(
                        status="decided",
                        label=label,
                        decided_by=moderator,
                        decided=now,
                        note=note,
                        reason_code=reason_code,  # the copy's reason is the original's
                    )
                ).rowcount
                if not done:
                    continue  # decided, or claimed by another moderator, meanwhile
                match = {"review": source, "distance": distance}
                self._audit(
                    connection, now, moderator, "decided", review_id, {"label": label, "note": note, "match": match}
                )
                self._remember(connection, now, review_id, label, moderator)
                if self.webhooks:
                    self._outbox(connection, now, EVENT_DECIDED, self._get(connection, review_id) | {"match": match})
            decided.append({"id": review_id, "distance": distance})
        return decided

    def revert(self, review_id: str, moderator: str, reason: object = None, *, lead: bool = True) -> dict[str, Any]:
        """Undo a decision: the item is pending again (its memory gone), the audit log keeps both
        and the reason given, and the client app hears `review.reverted` with the label it had. Only
        a lead may undo another moderator's decision (403 lead_only). Of two undos at once one wins,
        the other is 409 not_decided; an image pending again meanwhile (another item for the same
        bytes) is 409 pending_twin."""
        why = _free_text(reason, "reason")
        now = self.clock()
        try:
            with self.engine.begin() as connection:
                before = self._get(connection, review_id)
                if before["status"] != "decided":
                    raise NotDecided(review_id)
                if not lead and before["decided_by"] != moderator:
                    raise LeadOnly(f"{review_id} was decided by another moderator")
                reverted = connection.execute(
                    update(reviews)
                    .where(reviews.c.id == review_id, reviews.c.status == "decided")
                    .values(**_reopened(now))
                ).rowcount
                if not reverted:  # another undo won between the read and this update
                    raise NotDecided(review_id)
                self._audit(
                    connection, now, moderator, "reverted", review_id, {"label": before["label"], "reason": why}
                )
                matching.forget(connection, now, review_id)
                if self.webhooks:
                    self._outbox(
                        connection, now, EVENT_REVERTED, before | {"reverted_by": moderator, "revert_reason": why}
                    )
                return self._get(connection, review_id)
        except IntegrityError:
            with reading(self.engine) as connection:
                twin = connection.execute(
                    select(reviews.c.id).where(
                        reviews.c.status == "pending",
                        reviews.c.sha256 == select(reviews.c.sha256).where(reviews.c.id == review_id).scalar_subquery(),
                    )
                ).scalar()
            raise PendingTwin(f"{review_id}: the same bytes are pending as {twin}") from None

    def delete(self, review_id: str, moderator: str) -> None:
        """Remove an item (and with it a remembered decision); the client app hears `review.deleted`."""
        now = self.clock()
        with self.engine.begin() as connection:
            # The item's row first, as every transition takes it first (a decision, an undo): then its
            # signals, which a decision racing this one has committed by the time the lock is ours.
            locked = connection.execute(select(reviews.c.id).where(reviews.c.id == review_id).with_for_update()).first()
            if locked is None:
                raise NotFound(review_id)
            before = self._get(connection, review_id)
            connection.execute(delete(refs).where(refs.c.review_id == review_id))
            connection.execute(delete(frames).where(frames.c.review_id == review_id))
            connection.execute(delete(hashes).where(hashes.c.review_id == review_id))
            matching.forget(connection, now, review_id)
            gone = connection.execute(delete(reviews).where(reviews.c.id == review_id)).rowcount
            if not gone:
                raise NotFound(review_id)
            self._audit(
                connection, now, moderator, "deleted", review_id, {"status": before["status"], "label": before["label"]}
            )
            if self.webhooks:
                self._outbox(connection, now, EVENT_DELETED, before | {"deleted_by": moderator})

    def audit_log(self, review_id: str) -> list[dict[str, Any]]:
        with reading(self.engine) as connection:
            rows = connection.execute(select(audit).where(audit.c.review_id == review_id).order_by(audit.c.id)).all()
        return [
            {"at": iso(row.at), "actor": row.actor, "action": row.action, "detail": json.loads(row.detail)}
            for row in rows
        ]

    EXPORT_COLUMNS = ("id", "sha256", "model", "model_version", "verdict", "label", "decided_by", "created", "decided")

    def export(self, fmt: str) -> Iterator[str]:
        """Every decided item, oldest decision first: JSON lines or CSV (a labelled data set).

        Streamed: the rows come from the database a few hundred at a time (a server-side cursor on
        PostgreSQL), with only the exported columns (never a thumbnail) and the refs in the same
        query, so memory stays flat however many items there are."""
        columns = (
            reviews.c.id,
            reviews.c.sha256,
            reviews.c.model,
            reviews.c.model_version,
            reviews.c.verdict,
            reviews.c.label,
            reviews.c.decided_by,
            reviews.c.created,
            reviews.c.decided,
            reviews.c.kind,
            reviews.c.scores,
            reviews.c.note,
            reviews.c.frame_count,
            refs.c.ref,
            refs.c.key_name.label("ref_key"),
        )
        query = (
            select(*columns)
            .select_from(reviews.outerjoin(refs, and_(refs.c.review_id == reviews.c.id, refs.c.ref != JOINED)))
            .where(reviews.c.status == "decided")
            .order_by(reviews.c.decided, reviews.c.id, refs.c.added, refs.c.key_name, refs.c.ref)
        )
        with reading(self.engine) as connection:
            classes = self._export_classes(connection) if fmt == "csv" else []
            if fmt == "csv":
                yield _csv_line([*self.EXPORT_COLUMNS, *classes])
            result = connection.execution_options(stream_results=True, yield_per=500).execute(query)
            for row, item_refs in _grouped(result):
                scores = json.loads(row.scores)
                if fmt == "jsonl":
                    record = {name: getattr(row, name) for name in self.EXPORT_COLUMNS}
                    record["created"], record["decided"] = iso(row.created), iso(row.decided)
                    record |= {
                        "kind": row.kind,
                        "scores": scores,
                        "refs": item_refs,
                        "note": row.note,
                        "frame_count": row.frame_count or 1,
                    }
                    yield json.dumps(record) + "\n"
                else:
                    values = [getattr(row, name) for name in self.EXPORT_COLUMNS]
                    values[7], values[8] = iso(row.created), iso(row.decided)
                    yield _csv_line([*values, *(scores.get(name, "") for name in classes)])

    @staticmethod
    def _export_classes(connection: Any) -> list[str]:
        """The CSV's score columns: every class of the models that made the decided items (their
        catalogue's, or, for a model it does not know, what the scores name)."""
        names: set[str] = set()
        models = connection.execute(select(reviews.c.model).where(reviews.c.status == "decided").distinct()).scalars()
        for model in models:
            if model in MODELS:
                names.update(MODELS[model].classes)
                continue
            stream = connection.execution_options(stream_results=True, yield_per=500).execute(
                select(reviews.c.scores).where(reviews.c.status == "decided", reviews.c.model == model)
            )
            for (raw,) in stream:
                names.update(json.loads(raw))
        return sorted(names)

    def retain(
        self, *, retention_days: int, pending_days: int, audit_days: int, batch: int = RETENTION_BATCH
    ) -> dict[str, int]:
        """One retention pass; what it did, by kind:

        - `expired`: items pending for more than pending_days (0: never) leave the queue as
          `expired`, with an audit row and a `review.expired` webhook, never silently; an appeal no
          one answered in that time leaves it as the decision it contested, which stands (an appeal
          must never be a way to erase a decision), with `review.appeal_decided` (`expired`);
        - `thumbnails`: items decided (or expired) more than retention_days ago lose their pictures
          and refs; their scores, labels and hashes stay, as they are the memory;
        - `expired_items`: expired items past retention_days go;
        - `audit`: audit rows older than audit_days;
        - `outbox`: delivered and failed webhook messages older than retention_days."""
        now = self.clock()
        done = {"expired": 0, "thumbnails": 0, "expired_items": 0, "audit": 0, "outbox": 0}
        closed_before = now - retention_days * 86400
        if pending_days:
            with self.engine.begin() as connection:
                stale = connection.execute(
                    select(reviews.c.id)
                    .where(reviews.c.status == "pending", _PENDING_SINCE < now - pending_days * 86400)
                    .order_by(_PENDING_SINCE)
                    .limit(batch)
                ).scalars()
                for review_id in list(stale):
                    before = self._get(connection, review_id)
                    if before["appeal"] is not None:
                        done["expired"] += self._appeal_unanswered(connection, now, before, pending_days)
                        continue
                    expired = connection.execute(
                        update(reviews)
                        .where(reviews.c.id == review_id, reviews.c.status == "pending")
                        .values(status="expired", decided=now, decided_by=RETENTION_ACTOR, claimed_by=None)
                    ).rowcount
                    if not expired:
                        continue
                    self._audit(connection, now, RETENTION_ACTOR, "expired", review_id, {"after_days": pending_days})
                    if self.webhooks:
                        self._outbox(connection, now, EVENT_EXPIRED, before | {"expired": iso(now)})
                    done["expired"] += 1
        with self.engine.begin() as connection:
            old = connection.execute(
                select(reviews.c.id)
                .where(
                    reviews.c.status.in_(("decided", "expired")),
                    reviews.c.decided < closed_before,
                    or_(
                        reviews.c.thumbnail.is_not(None),
                        reviews.c.preview.is_not(None),
                        exists().where(frames.c.review_id == reviews.c.id),
                        exists().where(refs.c.review_id == reviews.c.id),
                    ),
                )
                .limit(batch)
            ).scalars()
            old_ids = list(old)
            if old_ids:
                connection.execute(delete(frames).where(frames.c.review_id.in_(old_ids)))
                connection.execute(delete(refs).where(refs.c.review_id.in_(old_ids)))
                connection.execute(
                    update(reviews).where(reviews.c.id.in_(old_ids)).values(thumbnail=None, preview=None)
                )
            done["thumbnails"] = len(old_ids)
            gone = connection.execute(
                select(reviews.c.id)
                .where(reviews.c.status == "expired", reviews.c.decided < closed_before)
                .limit(batch)
            ).scalars()
            gone_ids = list(gone)
            if gone_ids:
                connection.execute(delete(hashes).where(hashes.c.review_id.in_(gone_ids)))
                connection.execute(delete(reviews).where(reviews.c.id.in_(gone_ids)))
            done["expired_items"] = len(gone_ids)
            done["audit"] = connection.execute(delete(audit).where(audit.c.at < now - audit_days * 86400)).rowcount
            done["outbox"] = connection.execute(
                delete(outbox).where(outbox.c.status.in_(("delivered", "failed")), outbox.c.created < closed_before)
            ).rowcount
        return done

    def count(self, status: str, escalated: bool | None = None) -> int:
        """How many items have this status (and are escalated, or not)."""
        query = select(func.count()).where(reviews.c.status == status, _escalated_is(escalated))
        with reading(self.engine) as connection:
            return int(connection.execute(query).scalar_one())

    def _appeal_unanswered(self, connection: Any, now: float, before: dict[str, Any], pending_days: int) -> int:
        """An appeal pending past NSFW_REVIEW_PENDING_DAYS: the decision it contested stands again (its
        label, its moderator, its memory), audited and told to the client app as an appeal upheld
        because no one answered it. 1 when done, 0 when the item changed meanwhile."""
        review_id, appeal = before["id"], before["appeal"]
        note = f"appeal unanswered after {pending_days} days: the decision stands"
        restored = connection.execute(
            update(reviews)
            .where(reviews.c.id == review_id, reviews.c.status == "pending")
            .values(
                status="decided",
                label=appeal["label"],
                decided_by=appeal["decided_by"],
                decided=now,
                note=note,
                claimed_by=None,
                claim_until=None,
                escalated=None,
                escalated_by=None,
            )
        ).rowcount
        if not restored:
            return 0
        self._audit(connection, now, RETENTION_ACTOR, "appeal_expired", review_id, {"label": appeal["label"]})
        if self.match:
            self._remember(connection, now, review_id, appeal["label"], appeal["decided_by"])
        if self.webhooks:
            item = self._get(connection, review_id)
            self._outbox(
                connection, now, EVENT_APPEAL_DECIDED, item | {"appeal": _appeal_outcome(item) | {"expired": True}}
            )
        return 1

    def depth(self) -> tuple[int, float | None]:
        """Pending items, and how long, in seconds, the longest waiting has waited (since it was queued,
        or undone)."""
        with reading(self.engine) as connection:
            count, oldest = connection.execute(
                select(func.count(), func.min(_PENDING_SINCE)).where(reviews.c.status == "pending")
            ).one()
        return int(count), (self.clock() - oldest) if oldest is not None else None

    def deliveries(
        self, status: str | None = None, limit: int = MAX_PAGE, review_id: str | None = None
    ) -> list[dict[str, Any]]:
        """The webhook outbox, newest first: what was sent, what waits, what failed for good (of one
        item, with review_id)."""
        query = select(outbox).order_by(outbox.c.created.desc()).limit(limit)
        if status:
            query = query.where(outbox.c.status == status)
        if review_id:
            query = query.where(outbox.c.review_id == review_id)
        with reading(self.engine) as connection:
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

    def _refuse(self, connection: Any, review_id: str, moderator: str = "", lead: bool = True) -> None:
        """Why a transition found nothing to change: the right error for the item as it is now."""
        row = connection.execute(
            select(
                reviews.c.status,
                reviews.c.claimed_by,
                reviews.c.claim_until,
                reviews.c.escalated,
                reviews.c.appealed_decider,
            ).where(reviews.c.id == review_id)
        ).first()
        if row is None:
            raise NotFound(review_id)
        if row.status != "pending":
            raise AlreadyDecided(f"{review_id} is {row.status}")
        if row.escalated is not None and not lead:
            raise LeadOnly(f"{review_id} is escalated to the leads")
        if row.appealed_decider is not None and row.appealed_decider == moderator:
            raise SameModerator(f"{review_id}: an appeal against {moderator}'s own decision")
        if row.claimed_by is not None and row.claimed_by != moderator and (row.claim_until or 0) >= self.clock():
            raise Claimed(f"{review_id} claimed by {row.claimed_by} until {iso(row.claim_until)}")
        raise Claimed(f"{review_id} changed meanwhile; try again")

    @staticmethod
    def _audit(connection: Any, now: float, actor: str, action: str, review_id: str, detail: dict[str, Any]) -> None:
        connection.execute(
            insert(audit).values(at=now, actor=actor, action=action, review_id=review_id, detail=json.dumps(detail))
        )

    @staticmethod
    def _outbox(connection: Any, now: float, event_type: str, item: dict[str, Any]) -> None:
        message_id = _new_id("msg")
        # An item's messages are sent in this order: after its last one, even on a clock that stood still.
        last = connection.execute(select(func.max(outbox.c.created)).where(outbox.c.review_id == item["id"])).scalar()
        created = now if last is None or now > last else last + 1e-6
        data = {name: item[name] for name in ("id", "status", "refs", "label", "decided_by", "decided", "scores")}
        data |= {
            "model": item["model"],
            "moderator": item["decided_by"],
            "model_version": item["model_version"],
            "sha256": item["sha256"],
            "frame_count": item["frames"]["count"],
            # Why, for the client app's statement of reasons to its user: the moderator's reason code
            # (NSFW_REVIEW_REASONS) and note, when given.
            "reason_code": item["reason_code"],
            "note": item["note"],
        }
        data |= {
            name: item[name]
            for name in ("reverted_by", "revert_reason", "deleted_by", "expired", "match", "appeal")
            if name in item and item[name] is not None
        }
        payload = {"type": event_type, "timestamp": iso(now), "data": data}
        connection.execute(
            insert(outbox).values(
                id=message_id,
                review_id=item["id"],
                event=event_type,
                payload=json.dumps(payload, separators=(",", ":")),
                status="pending",
                attempts=0,
                next_at=now,
                created=created,
            )
        )

    def _items(self, connection: Any, rows: Sequence[Any]) -> list[dict[str, Any]]:
        """The rows as the API shows them, their refs read in one query."""
        ids = [row.id for row in rows]
        by_item: dict[str, list[dict[str, str]]] = {review_id: [] for review_id in ids}
        if ids:
            found = connection.execute(
                select(refs.c.review_id, refs.c.ref, refs.c.key_name)
                .where(refs.c.review_id.in_(ids), refs.c.ref != JOINED)
                .order_by(refs.c.added, refs.c.key_name, refs.c.ref)
            )
            for ref in found:
                by_item[ref.review_id].append({"ref": ref.ref, "key": ref.key_name})
        now = self.clock()
        return [_item(row, by_item[row.id], now) for row in rows]


# Every column of an item but its pictures, and whether it has them.
_ITEM_COLUMNS = (
    *(column for column in reviews.columns if column.name not in ("thumbnail", "preview")),
    reviews.c.thumbnail.is_not(None).label("has_thumbnail"),
)


# review_hashes' variants 0..7: a frame's dihedral hashes, its own first; 8..: its crops (pdq.CROPS).
_DIHEDRAL = range(len(TURNS) + 1)

# What a decision may decide with it, as its near-duplicate: pending model-unsure items, not audit
# samples (their point is a human's independent look), not the leads' escalated ones, not appeals
# (a user contests a decision there: a human must answer it).
_RETROACTABLE = (
    reviews.c.status == "pending",
    reviews.c.kind == "unknown",
    reviews.c.escalated.is_(None),
    reviews.c.appealed.is_(None),
)

# Since when an item waits for a human: queued, or undone (items from before 0004: queued).
_PENDING_SINCE = func.coalesce(reviews.c.pending_since, reviews.c.created)


def _strip_kept(candidate: Candidate) -> bool:
    """Whether an item keeps its classified frames (their scores and pictures): an animation's, and a
    video's even when one frame was judged (its time is what the moderator needs)."""
    return len(candidate.frames) > 1 or any("time_s" in frame for frame in candidate.frames)


def _involving(key_name: str) -> Any:
    """The item is one the key had a part in: it made it, or has a ref on it (JOINED included)."""
    return or_(
        reviews.c.key_name == key_name,
        exists().where(refs.c.review_id == reviews.c.id, refs.c.key_name == key_name),
    )


def _item(row: Any, item_refs: list[dict[str, str]], now: float) -> dict[str, Any]:
    claimed = row.claimed_by if row.claim_until is not None and row.claim_until >= now else None
    classified = json.loads(row.frames) if row.frames else []
    return {
        "id": row.id,
        "status": row.status,
        # An appealed item is an appeal (its first kind stays in the store: the team page's audit
        # agreement counts it).
        "kind": "appeal" if row.appealed is not None else row.kind,
        "refs": item_refs,
        "sha256": row.sha256,
        "key": row.key_name,
        "source_url": row.source_url,
        "model": row.model,
        "model_version": row.model_version,
        "scores": json.loads(row.scores),
        "verdict": row.verdict,
        "reason": row.reason,
        "summary": _summary(row),
        "created": iso(row.created),
        "claimed_by": claimed if row.status == "pending" else None,
        "claimed_until": iso(row.claim_until) if claimed and row.status == "pending" else None,
        "decided": iso(row.decided),
        "label": row.label,
        "decided_by": row.decided_by,
        "note": row.note,
        "reason_code": row.reason_code,
        "has_thumbnail": bool(row.has_thumbnail),
        # The deciding frame's own size in pixels (None for items from before revision 0006).
        "width": row.width,
        "height": row.height,
        "adult": row.adult,
        "escalated": iso(row.escalated),
        "escalated_by": row.escalated_by,
        # The decision the client app's user contests (None: never appealed).
        "appeal": None
        if row.appealed is None
        else {
            "appealed": iso(row.appealed),
            "ref": row.appeal_ref,
            "statement": row.appeal_statement,
            "label": row.appealed_label,
            "decided_by": row.appealed_decider,
        },
        # What the model judged: one frame for a still image; for an animation, each classified frame
        # (its strip picture is /reviews/<id>/frames/<position>) and the one that decided.
        "frames": {
            "count": row.frame_count or 1,
            "chosen": row.chosen_frame or 0,
            **({"video": True} if any("time_s" in frame for frame in classified) else {}),  # a video's samples
            "classified": [
                {
                    "position": position,
                    "index": frame["index"],
                    **({"time_s": frame["time_s"]} if "time_s" in frame else {}),  # a video's frame
                    "scores": frame["scores"],
                    "adult": adult_score(row.model, frame["scores"]),
                }
                for position, frame in enumerate(classified)
            ],
        },
    }


def _summary(row: Any) -> str:
    """Why the item waits, written for people (the model's own words are `reason`)."""
    adult = row.adult if row.adult is not None else adult_score(row.model, json.loads(row.scores))
    numbers = f"adult {adult:.2f}, safe {1 - adult:.2f}"
    if row.kind == "audit":
        return f"An audit sample: the model decided {row.verdict} on its own ({numbers}). Check it."
    if row.appealed is not None and row.appealed_label:
        return (
            f"An appeal: the user contests the decision {row.appealed_label} by {row.appealed_decider}. "
            f"The model said {numbers}."
        )
    return f"The model was not sure: {numbers}."


def _grouped(rows: Any) -> Iterator[tuple[Any, list[dict[str, str]]]]:
    """The export's joined rows (one per item and ref, ordered by item) as (item row, its refs)."""
    current, item_refs = None, []
    for row in rows:
        if current is not None and row.id != current.id:
            yield current, item_refs
            item_refs = []
        current = row
        if row.ref is not None:
            item_refs.append({"ref": row.ref, "key": row.ref_key})
    if current is not None:
        yield current, item_refs


def _csv_line(values: Sequence[Any]) -> str:
    out = io.StringIO()
    csv.writer(out).writerow(values)
    return out.getvalue()


def _open_to(review_id: str, moderator: str, now: float) -> Any:
    """The item is pending and no other moderator's claim on it is running."""
    return and_(
        reviews.c.id == review_id,
        reviews.c.status == "pending",
        or_(reviews.c.claimed_by.is_(None), reviews.c.claimed_by == moderator, reviews.c.claim_until < now),
    )


def _escalated_is(escalated: bool | None) -> Any:
    """Only the escalated items (the leads' view), only the others (the moderators' queue), or all."""
    if escalated is None:
        return true()
    return reviews.c.escalated.is_not(None) if escalated else reviews.c.escalated.is_(None)


def _free_text(value: object, name: str) -> str | None:
    """A moderator's words (a note, a reason): up to 2000 characters, trimmed, None when empty; not a
    string, or with a NUL (which PostgreSQL's text refuses), is the caller's error."""
    if value is None:
        return None
    if not isinstance(value, str) or "\x00" in value:
        raise InvalidLabel(f"{name} must be a string without NUL")
    return value.strip()[:2000] or None


def _reopened(now: float) -> dict[str, Any]:
    """A decided item pending again (an undo, an appeal): its decision, claim and escalation gone,
    its wait for a human starting now."""
    return {
        "status": "pending",
        "pending_since": now,
        "label": None,
        "decided": None,
        "decided_by": None,
        "note": None,
        "reason_code": None,
        "claimed_by": None,
        "claim_until": None,
        "escalated": None,
        "escalated_by": None,
    }


def _allowed_to(moderator: str, lead: bool) -> Any:
    """The moderator may decide the item: a lead's if escalated, another's than the decider's if an
    appeal."""
    appeal_ok = or_(reviews.c.appealed_decider.is_(None), reviews.c.appealed_decider != moderator)
    return appeal_ok if lead else and_(appeal_ok, reviews.c.escalated.is_(None))


def _appeal_outcome(item: dict[str, Any]) -> dict[str, Any]:
    """What review.appeal_decided tells the client app of the appeal."""
    appeal = dict(item["appeal"])
    return appeal | {"upheld": item["label"] == appeal["label"]}


def _make_cursor(created: float, review_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created, review_id]).encode()).decode().rstrip("=")


def _read_cursor(cursor: str) -> tuple[float, str]:
    from nsfw.errors import BadRequest

    try:
        created, review_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not math.isfinite(float(created)) or "\x00" in str(review_id):
            raise ValueError("not a cursor")
        return float(created), str(review_id)
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequest(f"cursor {cursor[:100]!r}: {exc}") from None

"""Finding items: the search page's filters as one SQL condition, parsed from its query string. No
Flask (the page, nsfw/review/pages.py, hands over request.args).

Every filter is optional and they combine with AND: a ref (any key's, exact), a status, a label, a
kind, the moderator who decided, the day range it came in (UTC, both ends included) and the range of
its adult score (the sum of its model's adult classes, as the verdicts compare)."""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import and_, exists, true

from nsfw.review.tables import refs, reviews

STATUSES = ("pending", "decided", "expired")
LABELS = ("adult", "safe")
KINDS = ("unknown", "audit", "appeal")
PAGE = 50


@dataclass(frozen=True)
class Filters:
    ref: str = ""
    status: str = ""
    label: str = ""
    kind: str = ""
    moderator: str = ""
    since: str = ""  # ?from=YYYY-MM-DD
    until: str = ""  # ?to=YYYY-MM-DD
    adult_min: float | None = None  # ?min=0.5
    adult_max: float | None = None  # ?max=0.9

    @classmethod
    def parse(cls, args: Mapping[str, str]) -> Filters:
        """The filters in a query string; ValueError naming the first one that is wrong."""
        found = cls(
            ref=args.get("ref", "").strip()[:200],
            status=args.get("status", ""),
            label=args.get("label", ""),
            kind=args.get("kind", ""),
            moderator=args.get("moderator", "").strip()[:64],
            since=args.get("from", "").strip(),
            until=args.get("to", "").strip(),
            adult_min=_score(args.get("min", ""), "min"),
            adult_max=_score(args.get("max", ""), "max"),
        )
        if "\x00" in found.ref + found.moderator:
            raise ValueError("a NUL is in no ref and no name")
        for name, allowed in (("status", STATUSES), ("label", LABELS), ("kind", KINDS)):
            value = getattr(found, name)
            if value and value not in allowed:
                raise ValueError(f"{name} is one of {', '.join(allowed)}")
        _day(found.since, "from")
        _day(found.until, "to")
        return found

    @property
    def empty(self) -> bool:
        return all(getattr(self, f.name) in ("", None) for f in fields(self))

    def condition(self) -> Any:
        """The filters as one condition on reviews."""
        parts: list[Any] = []
        if self.ref:
            parts.append(exists().where(refs.c.review_id == reviews.c.id, refs.c.ref == self.ref))
        if self.status:
            parts.append(reviews.c.status == self.status)
        if self.label:
            parts.append(reviews.c.label == self.label)
        if self.kind == "appeal":
            parts.append(reviews.c.appealed.is_not(None))
        elif self.kind:
            parts.append(and_(reviews.c.kind == self.kind, reviews.c.appealed.is_(None)))
        if self.moderator:
            parts.append(reviews.c.decided_by == self.moderator)
        if self.since:
            parts.append(reviews.c.created >= _day(self.since, "from"))
        if self.until:
            parts.append(reviews.c.created < _day(self.until, "to") + 86400)
        if self.adult_min is not None:
            parts.append(reviews.c.adult >= self.adult_min)
        if self.adult_max is not None:
            parts.append(reviews.c.adult <= self.adult_max)
        return and_(true(), *parts)

    def query_args(self) -> dict[str, str]:
        """The filters as the page's query string holds them (for the next page's link)."""
        values = {
            "ref": self.ref,
            "status": self.status,
            "label": self.label,
            "kind": self.kind,
            "moderator": self.moderator,
            "from": self.since,
            "to": self.until,
            "min": "" if self.adult_min is None else f"{self.adult_min:g}",
            "max": "" if self.adult_max is None else f"{self.adult_max:g}",
        }
        return {name: value for name, value in values.items() if value}


def _score(raw: str, name: str) -> float | None:
    raw = raw.strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} is a score from 0 to 1") from None
    if not 0 <= value <= 1:
        raise ValueError(f"{name} is a score from 0 to 1")
    return value


def _day(raw: str, name: str) -> float:
    """YYYY-MM-DD as the epoch second its UTC day begins (0 for empty)."""
    if not raw:
        return 0.0
    try:
        return float(calendar.timegm(time.strptime(raw, "%Y-%m-%d")))
    except ValueError:
        raise ValueError(f"{name} is a day, YYYY-MM-DD") from None

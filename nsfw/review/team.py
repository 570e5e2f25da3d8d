"""The team page's numbers, from the review store alone: the queue's depth and its oldest item, the
decisions each moderator made on each of the last days, how long items waited for their decision, and
how often two looks agreed: an appeal's moderator with the decision it contested, and a moderator
with the model on its audit samples. No Flask."""

from __future__ import annotations

import calendar
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select

from nsfw.review.queue import copied_from
from nsfw.review.tables import audit, reviews
from nsfw.store.engine import reading

DAYS = 7
RETROACTIVE = "near-duplicate of "  # a note retroaction writes: decided with another, not looked at


@dataclass
class Agreement:
    items: int = 0
    agreed: int = 0

    @property
    def share(self) -> float | None:
        return self.agreed / self.items if self.items else None


@dataclass
class Team:
    days: list[str]  # YYYY-MM-DD, newest first
    per_day: dict[str, dict[str, int]]  # moderator -> day -> decisions
    waits: dict[str, tuple[float, float]]  # moderator -> (median, 90th percentile) seconds to decision
    appeals: Agreement = field(default_factory=Agreement)  # upheld: the second moderator agreed
    audits: Agreement = field(default_factory=Agreement)  # the moderator agreed with the model
    retroactive: int = 0  # decided with a near-duplicate, in the same days

    def to_dict(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "per_day": self.per_day,
            "waits": {name: {"median_s": m, "p90_s": p} for name, (m, p) in self.waits.items()},
            "appeals": {"items": self.appeals.items, "upheld": self.appeals.agreed},
            "audits": {"items": self.audits.items, "agreed_with_model": self.audits.agreed},
            "retroactive": self.retroactive,
        }


def team(engine: Engine, now: float | None = None, days: int = DAYS) -> Team:
    """The last `days` UTC days. Decisions per moderator per day come from the audit log, so a decision
    undone or appealed later still counts for whoever made it; the waits and the agreement are of the
    items as they stand (an appeal's outcome is the item's label now)."""
    now = time.time() if now is None else now
    start = calendar.timegm(time.gmtime(now)[:3] + (0, 0, 0)) - (days - 1) * 86400
    names = [time.strftime("%Y-%m-%d", time.gmtime(now - n * 86400)) for n in range(days)]
    made = select(audit.c.actor, audit.c.at, audit.c.detail).where(audit.c.action == "decided", audit.c.at >= start)
    items = select(
        reviews.c.decided_by,
        reviews.c.decided,
        func.coalesce(reviews.c.pending_since, reviews.c.created).label("waiting_since"),
        reviews.c.kind,
        reviews.c.label,
        reviews.c.verdict,
        reviews.c.appealed,
        reviews.c.appealed_label,
        reviews.c.note,
    ).where(reviews.c.status == "decided", reviews.c.decided >= start)
    with reading(engine) as connection:
        decisions = connection.execute(made).all()
        rows = connection.execute(items).all()
    result = Team(days=names, per_day={}, waits={})
    per_day: dict[str, Counter[str]] = defaultdict(Counter)
    for decision in decisions:
        if copied_from(decision.detail) is not None:  # decided with a near-duplicate: no one looked at it
            result.retroactive += 1
            continue
        per_day[decision.actor][time.strftime("%Y-%m-%d", time.gmtime(decision.at))] += 1
    waits: dict[str, list[float]] = defaultdict(list)
    for row in rows:
        if row.note and row.note.startswith(RETROACTIVE):
            continue
        waits[row.decided_by or "-"].append(max(0.0, row.decided - row.waiting_since))
        if row.appealed is not None and row.appealed_label:
            result.appeals.items += 1
            result.appeals.agreed += row.label == row.appealed_label
        if row.kind == "audit":
            result.audits.items += 1
            result.audits.agreed += row.label == row.verdict
    result.per_day = {name: dict(counts) for name, counts in sorted(per_day.items())}
    result.waits = {name: (statistics.median(values), _p90(values)) for name, values in sorted(waits.items())}
    return result


def _p90(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]

"""Looking after the moderators: what a page shows them of an image before they reveal it, and how many
images they reveal before the page suggests a break. No Flask.

The operator sets the defaults (NSFW_REVIEW_BLUR_PX, _GREYSCALE, _HOLD_TO_PEEK, _HIDE_SCORES,
_SESSION_REVEALS, _DAILY_REVEALS); each moderator may change the looks for themselves, and may make
the limits stricter, never looser (an operator's limit is a promise to the team). Blur and greyscale
alone did not reduce harm in a 2026 study (Lewitzka et al.); limits and breaks matter more, so the
limits count what each moderator has actually revealed (the audit log's `revealed` rows), per sign-in
and per UTC day.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy import Engine, func, select

from nsfw.config import Settings
from nsfw.review.queue import REVEALED
from nsfw.review.tables import audit
from nsfw.store.engine import reading

BLUR_STEPS = (8, 16, 24, 32, 48, 64)  # the page's classes (review.css: body.blur-N)


@dataclass(frozen=True)
class Wellbeing:
    blur_px: int
    greyscale: bool
    hold_to_peek: bool
    hide_scores: bool
    session_reveals: int  # 0: no limit
    daily_reveals: int

    @classmethod
    def defaults(cls, settings: Settings) -> Wellbeing:
        return cls(
            blur_px=settings.review_blur_px,
            greyscale=settings.review_greyscale,
            hold_to_peek=settings.review_hold_to_peek,
            hide_scores=settings.review_hide_scores,
            session_reveals=settings.review_session_reveals,
            daily_reveals=settings.review_daily_reveals,
        )

    def over(self, own: Mapping[str, Any]) -> Wellbeing:
        """These defaults with a moderator's own settings (as stored: unknown or malformed values are
        ignored, limits only ever made stricter)."""
        changed = replace(self)
        if own.get("blur_px") in BLUR_STEPS:
            changed = replace(changed, blur_px=int(own["blur_px"]))
        for name in ("greyscale", "hold_to_peek", "hide_scores"):
            if isinstance(own.get(name), bool):
                changed = replace(changed, **{name: own[name]})
        for name in ("session_reveals", "daily_reveals"):
            value = own.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                limit = getattr(self, name)
                changed = replace(changed, **{name: value if limit == 0 else min(value, limit)})
        return changed

    @property
    def blur_class(self) -> str:
        """The page's class for the blur: the nearest step at or above the setting."""
        return f"blur-{next((step for step in BLUR_STEPS if step >= self.blur_px), BLUR_STEPS[-1])}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_form(form: Mapping[str, str]) -> dict[str, Any]:
    """A moderator's own settings from the settings page's form (ValueError on a value out of range);
    only what they set differently is kept (an empty limit: the operator's)."""
    own: dict[str, Any] = {}
    blur = form.get("blur_px", "")
    if blur:
        if not blur.isdigit() or int(blur) not in BLUR_STEPS:
            raise ValueError(f"the blur is one of {', '.join(map(str, BLUR_STEPS))} pixels")
        own["blur_px"] = int(blur)
    for name in ("greyscale", "hold_to_peek", "hide_scores"):
        own[name] = form.get(name) == "on"
    for name in ("session_reveals", "daily_reveals"):
        raw = form.get(name, "").strip()
        if raw:
            if not raw.isdigit() or not 1 <= int(raw) <= 100_000:
                raise ValueError("a limit is a whole number 1..100000, or empty for the team's")
            own[name] = int(raw)
    return own


@dataclass(frozen=True)
class Exposure:
    """How many items a moderator has revealed since signing in and today, against their limits."""

    session: int
    day: int
    session_limit: int
    day_limit: int

    @property
    def break_due(self) -> bool:
        return (0 < self.session_limit <= self.session) or (0 < self.day_limit <= self.day)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"break_due": self.break_due}


def exposure(
    engine: Engine, moderator: str, signed_in: float, settings: Wellbeing, now: float | None = None
) -> Exposure:
    """The items this moderator revealed since `signed_in` and since the UTC day began (each item once)."""
    now = time.time() if now is None else now
    day = float(calendar.timegm(time.gmtime(now)[:3] + (0, 0, 0)))

    def revealed_since(since: float) -> int:
        query = select(func.count(func.distinct(audit.c.review_id))).where(
            audit.c.actor == moderator, audit.c.action == REVEALED, audit.c.at >= since
        )
        with reading(engine) as connection:
            return int(connection.execute(query).scalar_one())

    return Exposure(revealed_since(signed_in), revealed_since(day), settings.session_reveals, settings.daily_reveals)

"""Scores -> a moderation verdict (adult, unknown or safe) and the rule that decided it.

The default follows the blog this project grew from: adult when porn + sexy + hentai is high, safe
when neutral + drawings is high, unknown (send to human review) in between. Both thresholds are
settings (NSFW_ADULT_THRESHOLD, NSFW_SAFE_THRESHOLD) and can be overridden per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from nsfw.errors import InvalidPolicy
from nsfw.numbers import parse_float

# GantMan's groups, the default; other models bring their own (nsfw/model/specs.py).
ADULT_CLASSES = ("hentai", "porn", "sexy")
SAFE_CLASSES = ("drawings", "neutral")
OVERRIDABLE = ("adult_threshold", "safe_threshold")


@dataclass(frozen=True)
class Verdict:
    label: str  # adult | unknown | safe
    reason: str  # which rule decided, with the numbers it compared

    def to_dict(self) -> dict[str, str]:
        return {"label": self.label, "reason": self.reason}


@dataclass(frozen=True)
class Policy:
    adult_threshold: float
    safe_threshold: float

    def problems(self) -> list[str]:
        """What is wrong with these thresholds; empty when they make a policy."""
        found = [
            f"{name} must be in (0, 1]"
            for name in OVERRIDABLE
            if not 0 < getattr(self, name) <= 1  # also refuses NaN
        ]
        if not found and self.adult_threshold + self.safe_threshold <= 1:
            # The two sums add up to 1, so both rules could match one image.
            found.append("adult_threshold + safe_threshold must be above 1")
        return found

    def overridden(self, values: Mapping[str, str]) -> Policy:
        """This policy with thresholds from a request's query; a bad value is 400 invalid_policy."""
        changes: dict[str, float] = {}
        for name in OVERRIDABLE:
            if name in values:
                try:
                    changes[name] = parse_float(values[name])
                except ValueError:
                    raise InvalidPolicy(f"{name}={values[name]!r} is not an ASCII decimal number") from None
        policy = replace(self, **changes)
        if problems := policy.problems():
            raise InvalidPolicy("; ".join(problems))
        return policy

    def decide(
        self,
        scores: Mapping[str, float],
        adult_classes: tuple[str, ...] = ADULT_CLASSES,
        safe_classes: tuple[str, ...] = SAFE_CLASSES,
    ) -> Verdict:
        """The verdict on one image's scores; the class groups are the model's (open_nsfw: nsfw / sfw)."""
        adult = sum(scores.get(name, 0.0) for name in adult_classes)
        safe = sum(scores.get(name, 0.0) for name in safe_classes)
        adult_sum, safe_sum = "+".join(adult_classes), "+".join(safe_classes)
        if adult >= self.adult_threshold:
            return Verdict("adult", f"{adult_sum} {adult:.3f} >= adult_threshold {self.adult_threshold}")
        if safe >= self.safe_threshold:
            return Verdict("safe", f"{safe_sum} {safe:.3f} >= safe_threshold {self.safe_threshold}")
        return Verdict(
            "unknown",
            f"{adult_sum} {adult:.3f} < adult_threshold {self.adult_threshold} and "
            f"{safe_sum} {safe:.3f} < safe_threshold {self.safe_threshold}: for human review",
        )

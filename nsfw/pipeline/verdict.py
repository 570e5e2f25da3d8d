"""Scores -> a moderation verdict (adult, unknown or safe) and the rule that decided it; and, when the
first tier's verdict is unknown, the second tier's.

The first tier follows the blog this project grew from: adult when porn + sexy + hentai is high, safe
when neutral + drawings is high, unknown (send to human review) in between. Both thresholds are
settings (NSFW_ADULT_THRESHOLD, NSFW_SAFE_THRESHOLD) and can be overridden per request.

The second tier, asked when the first says unknown, is one of two, set by the operator:
- NSFW_SECOND_TIER_MODEL: a second model of this service (e.g. inception_v3 or open_nsfw) run on the
  same image; its probability is the sum of its adult classes.
- NSFW_SECOND_TIER_URL: the operator's endpoint. The service POSTs the image's bytes
  (`Content-Type: application/octet-stream`) and expects 200 JSON `{"nsfw": p}` with p in [0, 1] (a
  single NSFW probability, as Yahoo's open_nsfw or Bumble's private detector give). The call goes
  through the same guarded client as image downloads (an endpoint on a private network must be
  opened with NSFW_ALLOWED_NETWORKS), within NSFW_SECOND_TIER_TIMEOUT.
p at or above NSFW_SECOND_TIER_ADULT_THRESHOLD is adult, at or below NSFW_SECOND_TIER_SAFE_THRESHOLD
safe, else still unknown.

A promoted adapter (nsfw/model/adapter.py: learned from this community's own decisions) comes
between the two: when the first tier says unknown (and would at the operator's own thresholds, where
the adapter learnt: a request's stricter ones send the rest to humans), the adapter's probability p
decides at the request's thresholds (adult when p reaches adult_threshold, safe when 1 - p reaches
safe_threshold); if it too is unsure, the second tier is asked. With NSFW_ADAPTER_OVERRIDE it may
also overturn the first tier's automatic verdict when it is sure of the other label. A human's
remembered decision comes after all of them (nsfw/review), so no adapter overturns one.

Everything here but `HttpSecondTier.ask` is a pure function of its arguments.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from nsfw.config import VerdictSettings, threshold_problems
from nsfw.errors import InvalidPolicy, NsfwError, UpstreamError
from nsfw.fetch import Fetcher
from nsfw.model.specs import GANTMAN_ADULT, GANTMAN_SAFE
from nsfw.numbers import parse_float

OVERRIDABLE = ("adult_threshold", "safe_threshold")
MAX_ANSWER_BYTES = 64 * 1024


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

    @classmethod
    def of(cls, settings: VerdictSettings) -> Policy:
        """The policy the settings define (requests may override its thresholds)."""
        return cls(settings.adult_threshold, settings.safe_threshold)

    def problems(self) -> list[str]:
        """What is wrong with these thresholds; empty when they make a policy."""
        return threshold_problems(self.adult_threshold, self.safe_threshold)

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
        adult_classes: tuple[str, ...] = GANTMAN_ADULT,
        safe_classes: tuple[str, ...] = GANTMAN_SAFE,
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


@dataclass(frozen=True)
class SecondTierPolicy:
    adult_threshold: float
    safe_threshold: float

    def decide(self, source: str, p: float) -> Verdict:
        """The verdict on the second tier's probability; source names it in the reason."""
        if p >= self.adult_threshold:
            return Verdict("adult", f"second tier {source} nsfw {p:.3f} >= {self.adult_threshold}")
        if p <= self.safe_threshold:
            return Verdict("safe", f"second tier {source} nsfw {p:.3f} <= {self.safe_threshold}")
        return Verdict(
            "unknown", f"second tier {source} nsfw {p:.3f} between {self.safe_threshold} and {self.adult_threshold}"
        )


@dataclass(frozen=True)
class HttpSecondTier:
    url: str
    timeout: float

    def ask(self, fetcher: Fetcher, image: bytes) -> float:
        """The endpoint's probability; UpstreamError/UpstreamTimeout on failure."""
        raw = fetcher.post(
            self.url, image, content_type="application/octet-stream", timeout=self.timeout, max_bytes=MAX_ANSWER_BYTES
        )
        try:
            p = float(json.loads(raw)["nsfw"])
        except (ValueError, TypeError, KeyError) as exc:
            raise UpstreamError(f"second tier answered {raw[:100]!r}: {exc}") from None
        if not 0 <= p <= 1 or math.isnan(p):
            raise UpstreamError(f"second tier answered nsfw={p}")
        return p


@dataclass(frozen=True)
class Decided:
    """A verdict, the tier that gave it, and what the second tier and the adapter said when asked."""

    verdict: Verdict
    tier: int | str = 1  # 1, 2 or "adapter"
    second_tier: dict[str, Any] | None = None
    adapter: dict[str, Any] | None = None


def adapter_verdict(policy: Policy, version: int, p: float) -> Verdict:
    """The adapter's verdict on its probability p at the policy's thresholds."""
    if p >= policy.adult_threshold:
        return Verdict("adult", f"adapter v{version} p(adult) {p:.3f} >= adult_threshold {policy.adult_threshold}")
    if 1.0 - p >= policy.safe_threshold:
        return Verdict("safe", f"adapter v{version} p(safe) {1.0 - p:.3f} >= safe_threshold {policy.safe_threshold}")
    return Verdict("unknown", f"adapter v{version} p(adult) {p:.3f}: not sure either")


class Tiers:
    """The verdict on one image: the first tier's, and when that is unknown and a second tier is set,
    the second's. The second tier's probability comes from the pipeline (`ask`): the sum of a second
    model's adult classes, or the operator's endpoint."""

    def __init__(self, settings: VerdictSettings) -> None:
        self.second_model = settings.second_tier_model
        self.second_policy = SecondTierPolicy(settings.second_tier_adult_threshold, settings.second_tier_safe_threshold)
        self.http = (
            HttpSecondTier(settings.second_tier_url, settings.second_tier_timeout) if settings.second_tier_url else None
        )
        self.override = settings.adapter_override
        # The operator's thresholds: an adapter learnt from what the model left unknown at these, so
        # without the override it decides only there (a caller's stricter thresholds that leave more
        # unknown send those to humans, as asked, not to an adapter that never saw such images).
        self.operator = Policy.of(settings)

    def decide(
        self,
        policy: Policy,
        scores: Mapping[str, float],
        adult_classes: tuple[str, ...],
        safe_classes: tuple[str, ...],
        ask: Callable[[Tiers], float],
        failed: Callable[[NsfwError], None] = lambda _: None,
        *,
        learned: tuple[int, float] | None = None,
    ) -> Decided:
        """The first tier's verdict on scores; when it is unknown, the adapter's (learned: its version
        and probability, when one is promoted); when that is unknown too and a second tier is set,
        `ask(self)` gives the second tier's probability (`failed` hears its error: the unknown then
        stands, and says why)."""
        verdict = policy.decide(scores, adult_classes, safe_classes)
        said: dict[str, Any] | None = None
        if learned is not None:
            version, p = learned
            said = {"version": version, "probability": round(p, 6)}
            opinion = adapter_verdict(policy, version, p)
            in_band = self.operator.decide(scores, adult_classes, safe_classes).label == "unknown"
            if opinion.label != "unknown" and (
                (verdict.label == "unknown" and (in_band or self.override))
                or (self.override and opinion.label != verdict.label)
            ):
                if verdict.label != "unknown":  # overturned: the first tier's word stays in the reason
                    opinion = Verdict(opinion.label, f"{opinion.reason}, over the model's {verdict.reason}")
                return Decided(opinion, tier="adapter", adapter=said)
        if verdict.label != "unknown" or not (self.second_model or self.http):
            return Decided(verdict, adapter=said)
        try:
            p = ask(self)
        except NsfwError as exc:
            failed(exc)
            return Decided(verdict, second_tier=exc.to_dict(), adapter=said)
        source = self.second_model or "endpoint"
        answer = {"model": self.second_model, "nsfw": p} if self.second_model else {"nsfw": p}
        return Decided(self.second_policy.decide(source, p), tier=2, second_tier=answer, adapter=said)

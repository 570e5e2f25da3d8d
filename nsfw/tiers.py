"""The second opinion: when the first model's verdict is unknown, a second tier decides.

Either of two, set by the operator:
- NSFW_SECOND_TIER_MODEL: a second model of this service (e.g. inception_v3 or open_nsfw) run on the
  same image; its probability is the sum of its adult classes.
- NSFW_SECOND_TIER_URL: the operator's endpoint. The service POSTs the image's bytes
  (`Content-Type: application/octet-stream`) and expects 200 JSON `{"nsfw": p}` with p in [0, 1] (a
  single NSFW probability, as Yahoo's open_nsfw or Bumble's private detector give). The call goes
  through the same guarded client as image downloads (an endpoint on a private network must be
  opened with NSFW_ALLOWED_NETWORKS), within NSFW_SECOND_TIER_TIMEOUT.
p at or above NSFW_SECOND_TIER_ADULT_THRESHOLD is adult, at or below NSFW_SECOND_TIER_SAFE_THRESHOLD
safe, else still unknown.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from nsfw.errors import UpstreamError
from nsfw.fetch import Fetcher
from nsfw.policy import Verdict

MAX_ANSWER_BYTES = 64 * 1024


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

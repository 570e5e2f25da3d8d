"""The second opinion: when the first model's verdict is unknown, the operator's endpoint decides.

Contract: the service POSTs the image's bytes (`Content-Type: application/octet-stream`) to
NSFW_SECOND_TIER_URL and expects 200 JSON `{"nsfw": p}` with p in [0, 1] (a single NSFW
probability, as Yahoo's open_nsfw or Bumble's private detector give). p at or above
NSFW_SECOND_TIER_ADULT_THRESHOLD is adult, at or below NSFW_SECOND_TIER_SAFE_THRESHOLD safe, else
still unknown. The call goes through the same guarded client as image downloads (an endpoint on a
private network must be opened with NSFW_ALLOWED_NETWORKS), within NSFW_SECOND_TIER_TIMEOUT.
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
class SecondTier:
    url: str
    timeout: float
    adult_threshold: float
    safe_threshold: float

    def ask(self, fetcher: Fetcher, image: bytes) -> tuple[float, Verdict]:
        """The endpoint's probability and the verdict it gives; UpstreamError/Timeout on failure."""
        raw = fetcher.post(
            self.url, image, content_type="application/octet-stream", timeout=self.timeout, max_bytes=MAX_ANSWER_BYTES
        )
        try:
            p = float(json.loads(raw)["nsfw"])
        except (ValueError, TypeError, KeyError) as exc:
            raise UpstreamError(f"second tier answered {raw[:100]!r}: {exc}") from None
        if not 0 <= p <= 1 or math.isnan(p):
            raise UpstreamError(f"second tier answered nsfw={p}")
        if p >= self.adult_threshold:
            return p, Verdict("adult", f"second tier nsfw {p:.3f} >= {self.adult_threshold}")
        if p <= self.safe_threshold:
            return p, Verdict("safe", f"second tier nsfw {p:.3f} <= {self.safe_threshold}")
        return p, Verdict(
            "unknown", f"second tier nsfw {p:.3f} between {self.safe_threshold} and {self.adult_threshold}"
        )

"""The result cache: what was classified is not classified twice.

Key: the API key's name (a result is never shared between keys: a hit answers at once, which would
tell one key that another had sent the bytes), the image bytes' sha256, the model's name and version,
and the resize mode that made its input (`-` for models whose preprocessing has none), so a different
key, model, version, resize or byte never hits. Value: the scores and the frame summary, never the image. Two layers:

- each worker's bounded LRU of NSFW_CACHE_SIZE entries (a few hundred bytes each);
- with NSFW_REDIS_URL, Redis, shared by every worker and instance, entries kept NSFW_CACHE_TTL
  seconds. Redis is asked with short timeouts and no retries, never while the model's lock is held
  (the service writes this worker's layer under the lock and Redis after it); when it fails the
  answer is a miss (logged, counted in nsfw_cache_errors_total), never an error or a wait past the
  request's deadline. A Redis that keeps failing (BREAKER_FAILURES in a row) is not asked at all for
  BREAKER_SECONDS, then once to see whether it is back (nsfw_cache_breaker_opened_total,
  nsfw_cache_errors_total{operation="skipped"}): a Redis that accepts connections and never answers
  would otherwise cost every request its timeout.

JSON keeps a float's shortest repr, which reads back as the same float: a hit's flat answer is
byte-identical to the miss that filled it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

from nsfw import metrics
from nsfw.breaker import Breaker
from nsfw.slots import off_model

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
PREFIX = "nsfw:result:"


def sha256_of(body: IO[bytes]) -> str:
    body.seek(0)
    digest = hashlib.sha256()
    while chunk := body.read(_CHUNK):
        digest.update(chunk)
    body.seek(0)
    return digest.hexdigest()


@dataclass(frozen=True)
class Entry:
    """What a classification leaves behind: the scores of each classified frame and the answer's."""

    frame_indices: list[int]
    frame_scores: list[dict[str, float]]
    chosen: int
    frame_count: int
    # A video's: each classified frame's time in seconds, and the container's facts.
    frame_times: list[float | None] | None = None
    video: dict[str, Any] | None = None
    # Each classified frame's PDQ hashes (nsfw/matching/pdq.FrameHashes.to_json), when the instance
    # that classified it matches near-duplicates; None otherwise.
    hashes: list[Any] | None = None
    # The deciding frame's embedding (nsfw.model.Inference), float32 little-endian, for the learned
    # adapter tier and the review item; None when the model gives none.
    embedding: bytes | None = None

    def to_json(self) -> str:
        fields: list[Any] = [self.frame_indices, self.frame_scores, self.chosen, self.frame_count]
        if self.video is not None or self.hashes is not None or self.embedding is not None:
            fields += [self.frame_times, self.video]
        if self.hashes is not None or self.embedding is not None:
            fields.append(self.hashes)
        if self.embedding is not None:
            fields.append(base64.b64encode(self.embedding).decode())
        return json.dumps(fields)

    @classmethod
    def from_json(cls, raw: str | bytes) -> Entry:
        indices, scores, chosen, count, *rest = json.loads(raw)
        times, facts = rest[:2] if len(rest) >= 2 else (None, None)
        hashes = rest[2] if len(rest) >= 3 else None
        embedding = base64.b64decode(rest[3]) if len(rest) >= 4 and isinstance(rest[3], str) else None
        return cls(list(indices), list(scores), int(chosen), int(count), times, facts, hashes, embedding)


def key(tenant: str, sha256: str, model: str, version: str, resize: str) -> str:
    """The entry's key: a result is shared within one tenant (API key) only (pipeline.flow.TENANT)."""
    return f"{tenant}/{sha256}:{model}:{version}:{resize}"


# A Redis that failed this many times in a row is left alone for BREAKER_SECONDS.
BREAKER_FAILURES = 3
BREAKER_SECONDS = 5.0
# Each Redis call waits at most this long, once (redis-py's default retries a timeout 3 times,
# with a backoff of up to 10 s: a silent Redis held a request for more than 30 s).
REDIS_TIMEOUT = 0.25


class ResultCache:
    def __init__(
        self, size: int, redis_url: str = "", ttl: int = 0, client: Any = None, breaker: Breaker | None = None
    ) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self._redis = client
        self.breaker = breaker or Breaker(BREAKER_FAILURES, BREAKER_SECONDS)
        if client is None and redis_url:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            self._redis = redis.Redis.from_url(
                redis_url,
                socket_timeout=REDIS_TIMEOUT,
                socket_connect_timeout=REDIS_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
            )

    def get(self, cache_key: str) -> Entry | None:
        with self._lock:
            raw = self._entries.get(cache_key)
            if raw is not None:
                self._entries.move_to_end(cache_key)
        if raw is not None:
            metrics.CACHE_LOOKUPS.labels("memory", "hit").inc()
            return Entry.from_json(raw)
        shared = self._ask("get", lambda redis: redis.get(PREFIX + cache_key))
        if shared is not None:
            metrics.CACHE_LOOKUPS.labels("redis", "hit").inc()
            self._remember(cache_key, shared.decode() if isinstance(shared, bytes) else shared)
            return Entry.from_json(shared)
        metrics.CACHE_LOOKUPS.labels("all", "miss").inc()
        return None

    def get_local(self, cache_key: str) -> Entry | None:
        """This worker's layer alone (the single-flight check under the model lock)."""
        with self._lock:
            raw = self._entries.get(cache_key)
        if raw is None:
            return None
        metrics.CACHE_LOOKUPS.labels("memory", "hit").inc()
        return Entry.from_json(raw)

    def remember(self, cache_key: str, entry: Entry) -> None:
        """This worker's layer alone: safe under the model's lock (no network)."""
        self._remember(cache_key, entry.to_json())

    def share(self, cache_key: str, entry: Entry) -> None:
        """The shared layer (Redis), never under the model's lock; a failure is logged and counted."""
        raw = entry.to_json()
        self._ask("set", lambda redis: redis.set(PREFIX + cache_key, raw, ex=self.ttl or None))

    def _ask(self, operation: str, call: Callable[[Any], Any]) -> Any:
        """call(redis), or None when there is no Redis, the breaker skips it, or it fails."""
        if self._redis is None:
            return None
        off_model(f"Redis {operation}")
        if not self.breaker.allow():
            metrics.CACHE_ERRORS.labels("skipped").inc()
            return None
        try:
            answer = call(self._redis)
        except Exception as exc:  # noqa: BLE001 - any failure of the shared layer is a miss
            self._failed(operation, exc)
            if self.breaker.failed():
                log.warning(
                    "result cache: Redis failed %d times in a row; not asked for %.0f s",
                    BREAKER_FAILURES,
                    BREAKER_SECONDS,
                )
                metrics.CACHE_BREAKER_OPENED.inc()
            return None
        self.breaker.succeeded()
        return answer

    def _remember(self, cache_key: str, raw: str) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._entries[cache_key] = raw
            self._entries.move_to_end(cache_key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def _failed(operation: str, exc: Exception) -> None:
        log.warning("result cache: Redis %s failed (%s: %s); a miss", operation, type(exc).__name__, str(exc)[:200])
        metrics.CACHE_ERRORS.labels(operation).inc()

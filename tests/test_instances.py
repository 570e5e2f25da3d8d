"""Two instances from outside: separate gunicorn masters (2 workers each) on one Redis and one
PostgreSQL. A limit per key holds in total, a result computed by one is a hit on the other, an item
queued through one is decided through the other and heard once, and Redis can go away and come back."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from standardwebhooks.webhooks import Webhook

from nsfw.cache import BREAKER_SECONDS
from scripts import hostile_images as bombs
from tests.served import Gunicorn, call
from tests.servers import PostgresServer, RedisServer
from tests.support import ImageServer
from tests.test_review import SECRET, Receiver

APP, LIMITED, MOD = "a" * 43, "l" * 43, "m" * 43
LIMIT = 6
STRICT = "detail=true&adult_threshold=0.9999&safe_threshold=0.9999"


def _call(server: Gunicorn, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, dict | str]:
    """call(), its answer parsed as JSON, or as text where it is not JSON."""
    status, raw, _ = call(server, method, path, token, body)
    text = raw.decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def _inferences(server: Gunicorn) -> float:
    status, text = _call(server, "GET", "/metrics", APP)
    assert status == 200 and isinstance(text, str)
    prefix = 'nsfw_stage_duration_seconds_count{model="mobilenet_v2",stage="inference"} '
    return sum(float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix))


def test_two_instances_share_limits_results_and_reviews(
    start_gunicorn: Callable[..., Gunicorn],
    image_server: ImageServer,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    redis = RedisServer(tmp_path / "redis")
    receiver = Receiver(image_server, [])
    env = {
        "NSFW_REDIS_URL": redis.uri,
        "NSFW_CACHE_SIZE": "64",
        "NSFW_RATE_LIMIT": f"{LIMIT}/minute",
        "NSFW_REVIEW": "true",
        "NSFW_DATABASE_URL": postgres_server.database("instances"),
        "NSFW_SECRET_KEY": "s" * 40,
        "NSFW_API_KEYS": f"app:{APP},limited:{LIMITED},moderation:{MOD}:review",
        "NSFW_REVIEW_WEBHOOK_URL": receiver.url,
        "NSFW_REVIEW_WEBHOOK_SECRET": SECRET,
    }
    try:
        one, two = start_gunicorn(env), start_gunicorn(env)
        # A limit of 6 per key, asked of both instances in turn: 6 answered in all, not 12.
        statuses = [_call(server, "GET", "/models", LIMITED)[0] for server in (one, two) * LIMIT]
        assert statuses.count(200) == LIMIT and statuses.count(429) == LIMIT

        # Classified through one, a hit through the other: its model does not run.
        photo = image_server.add_file("/p.jpg", bombs.jpeg_flat(80, 60))
        query = f"/predict?url={urllib.parse.quote(photo)}&detail=true"
        first = _call(one, "POST", query, APP)[1]
        before = _inferences(two)
        assert _call(two, "POST", query, APP)[1]["scores"] == first["scores"]  # type: ignore[index]
        assert _inferences(two) == before

        # Queued through one, decided through two, heard once (both instances' senders run).
        unknown = image_server.add_file("/u.jpg", bombs.jpeg_flat(96, 48))
        status, queued = _call(one, "POST", f"/predict?url={urllib.parse.quote(unknown)}&{STRICT}&ref=r1", APP)
        review_id = queued["review"]["id"]  # type: ignore[index]
        assert _call(two, "POST", f"/reviews/{review_id}/decision", MOD, {"label": "adult"})[0] == 200
        deadline = time.monotonic() + 15
        while not receiver.received and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3)  # every worker of both instances makes a pass or more meanwhile
        assert len(receiver.received) == 1
        headers, raw, _ = receiver.received[0]
        assert Webhook(SECRET).verify(raw, {k.lower(): v for k, v in headers.items()})["data"]["id"] == review_id

        # Redis gone: every request still answers, none a 500; results are misses.
        redis.stop()
        answered = []
        for n in range(6):
            image = image_server.add_file(f"/gone{n}.jpg", bombs.jpeg_flat(40 + n, 40))
            server = (one, two)[n % 2]
            answered.append(_call(server, "POST", f"/predict?url={urllib.parse.quote(image)}&detail=true", APP)[0])
        assert answered == [200] * 6

        # Redis back on its address: results are shared again, once each worker's breaker lets it ask
        # Redis again (nsfw.cache.BREAKER_SECONDS after its last failure).
        redis = RedisServer(tmp_path / "redis-again", port=redis.port)
        shared, deadline, n = False, time.monotonic() + 4 * BREAKER_SECONDS, 0
        while not shared and time.monotonic() < deadline:
            n += 1
            again = image_server.add_file(f"/again{n}.jpg", bombs.jpeg_flat(72 + n, 40))
            query = f"/predict?url={urllib.parse.quote(again)}&detail=true"
            _call(one, "POST", query, APP)
            before = _inferences(two)
            _call(two, "POST", query, APP)
            shared = _inferences(two) == before
            time.sleep(0.5)
        assert shared
    finally:
        redis.stop()

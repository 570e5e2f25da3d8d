"""Rate limits (NSFW_RATE_LIMIT, nsfw/web/access.py) and the storage every worker shares (nsfw/web/limitstore.py)."""

from __future__ import annotations

import multiprocessing
from dataclasses import replace
from pathlib import Path

import pytest
from limits import parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter
from prometheus_client import REGISTRY

from nsfw import create_app
from nsfw.config import ConfigError, Settings, parse_api_keys
from nsfw.web.limitstore import SCHEME
from tests.servers import RedisServer
from tests.support import FakeClassifier

A, B = "a" * 40, "b" * 40


@pytest.mark.parametrize("raw", ["lots", "10/fortnight", "ten/minute", "10/minute;;x", "-1/minute"])
def test_a_malformed_limit_stops_the_boot(raw: str) -> None:
    with pytest.raises(ConfigError, match="NSFW_RATE_LIMIT"):
        Settings.from_env({"NSFW_RATE_LIMIT": raw})


def test_limits_in_flask_limiters_notation_are_taken() -> None:
    assert Settings.from_env({"NSFW_RATE_LIMIT": "120/minute;5000/day"}).rate_limit == "120/minute;5000/day"


def test_over_the_limit_is_429_with_its_headers(settings: Settings) -> None:
    client = create_app(replace(settings, rate_limit="3/minute"), FakeClassifier()).test_client()
    answers = [client.get("/models") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    over = answers[-1]
    assert over.get_json()["error"]["code"] == "rate_limited"
    assert int(over.headers["Retry-After"]) > 0 and over.headers["X-RateLimit-Limit"] == "3"
    assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0", "0"]
    assert "X-Request-Id" in over.headers


def test_each_key_and_each_address_has_its_own_count(settings: Settings) -> None:
    keyed = replace(settings, rate_limit="2/minute", api_keys=parse_api_keys(f"a:{A},b:{B}"))
    client = create_app(keyed, FakeClassifier()).test_client()
    statuses = [client.get("/models", headers={"X-API-Key": key}).status_code for key in (A, A, A, B, B, B)]
    assert statuses == [200, 200, 429, 200, 200, 429]
    open_client = create_app(replace(settings, rate_limit="2/minute"), FakeClassifier()).test_client()
    by_address = [
        open_client.get("/models", environ_base={"REMOTE_ADDR": address}).status_code
        for address in ("10.0.0.1", "10.0.0.1", "10.0.0.1", "10.0.0.2")
    ]
    assert by_address == [200, 200, 429, 200]


def test_health_and_metrics_are_never_limited(settings: Settings) -> None:
    client = create_app(replace(settings, rate_limit="1/minute"), FakeClassifier()).test_client()
    assert [client.get("/health").status_code for _ in range(5)] == [200] * 5
    assert [client.get("/metrics").status_code for _ in range(5)] == [200] * 5
    assert [client.get("/models").status_code for _ in range(2)] == [200, 429]


def _hit_many(path: str, count: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    import nsfw.web.limitstore  # noqa: F401 - registers the scheme in this process

    limiter = FixedWindowRateLimiter(storage_from_string(f"{SCHEME}://{path}"))
    out.put(sum(limiter.hit(parse("60/minute"), "caller") for _ in range(count)))


def test_the_shared_storage_holds_a_limit_across_processes(tmp_path: Path) -> None:
    """Two processes hitting one limit of 60, 50 times each: 60 allowed in total, not 100."""
    path = str(tmp_path / "limits.sqlite")
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    workers = [context.Process(target=_hit_many, args=(path, 50, out)) for _ in range(2)]
    for worker in workers:
        worker.start()
    allowed = [out.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
    assert sum(allowed) == 60


def test_the_shared_storage_keeps_windows(tmp_path: Path) -> None:
    import nsfw.web.limitstore  # noqa: F401

    storage = storage_from_string(f"{SCHEME}://{tmp_path / 'limits.sqlite'}")
    assert storage.check() and storage.get("k") == 0
    assert [storage.incr("k", 60) for _ in range(3)] == [1, 2, 3]
    assert storage.get("k") == 3 and storage.get_expiry("k") > 0
    assert storage.incr("short", -1) == 1 and storage.incr("short", -1) == 1  # an ended window starts again
    storage.clear("k")
    assert storage.get("k") == 0 and storage.reset() == 1


def test_a_failing_counter_store_falls_back_to_the_process_counters(settings: Settings, tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    instance.mkdir()
    app = create_app(replace(settings, rate_limit="1/minute", instance_dir=instance), FakeClassifier())
    client = app.test_client()
    assert [client.get("/models").status_code for _ in range(2)] == [200, 429]
    (instance / "limits.sqlite").unlink()
    (instance / "limits.sqlite").mkdir()  # the counters' file is now a folder: every query fails
    for name in ("limits.sqlite-wal", "limits.sqlite-shm"):
        (instance / name).unlink(missing_ok=True)
    fresh = create_app(replace(settings, rate_limit="1/minute", instance_dir=instance), FakeClassifier())
    errors_before = REGISTRY.get_sample_value("nsfw_rate_limit_errors_total") or 0
    # No 500: the limit holds per process (Flask-Limiter's in-memory fallback) until the store answers.
    assert [fresh.test_client().get("/models").status_code for _ in range(3)] == [200, 429, 429]
    assert (REGISTRY.get_sample_value("nsfw_rate_limit_errors_total") or 0) > errors_before


@pytest.mark.parametrize("raw", ["memcached://127.0.0.1:11211", "127.0.0.1:6379", "http://redis"])
def test_a_storage_that_is_not_redis_stops_the_boot_without_echoing_it(raw: str) -> None:
    with pytest.raises(ConfigError, match="NSFW_RATE_LIMIT_STORAGE=\\(hidden\\)") as refused:
        Settings.from_env({"NSFW_RATE_LIMIT_STORAGE": raw})
    assert raw not in str(refused.value)


def test_instances_sharing_redis_share_the_limit(settings: Settings, redis_server: RedisServer) -> None:
    """Two instances (two apps, each with its own instance folder) on one Redis: 3 allowed in all."""
    redis_server.client.flushdb()
    shared = replace(settings, rate_limit="3/minute", rate_limit_storage=redis_server.uri)
    first = create_app(shared, FakeClassifier()).test_client()
    second = create_app(shared, FakeClassifier()).test_client()
    statuses = [client.get("/models").status_code for client in (first, second, first, second, first, second)]
    assert statuses == [200, 200, 200, 429, 429, 429]
    assert redis_server.client.dbsize() > 0  # the counters are in Redis, not in either process


def test_a_redis_that_goes_away_degrades_and_is_counted(settings: Settings, tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    limited = replace(settings, rate_limit="2/minute", rate_limit_storage=server.uri)
    client = create_app(limited, FakeClassifier()).test_client()
    assert client.get("/models").status_code == 200
    server.stop()
    errors_before = REGISTRY.get_sample_value("nsfw_rate_limit_errors_total") or 0
    statuses = [client.get("/models").status_code for _ in range(3)]
    # The process counts on by itself: no 500, and the limit still holds within it.
    assert statuses == [200, 200, 429]
    assert (REGISTRY.get_sample_value("nsfw_rate_limit_errors_total") or 0) > errors_before


def test_a_new_counter_file_contended_at_first_use_is_waited_for(tmp_path: Path) -> None:
    """Another process holding the file's write lock while this one switches it to WAL: SQLite
    answers "database is locked" at once (no busy wait, a deadlock is possible), as it did when two
    processes' first hits met on a fresh file. The store waits for the lock instead of failing."""
    import sqlite3
    import threading

    path = tmp_path / "limits.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE held (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO held VALUES (1)")
    threading.Timer(0.3, lambda: holder.execute("COMMIT")).start()
    storage = storage_from_string(f"{SCHEME}://{path}")
    assert storage.incr("caller", 60) == 1
    holder.close()


def test_a_closed_service_refuses_while_its_store_is_gone_and_never_500s(settings: Settings, tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    limited = replace(settings, rate_limit="100/minute", rate_limit_storage=server.uri, rate_limit_on_error="closed")
    client = create_app(limited, FakeClassifier()).test_client()
    assert client.get("/models").status_code == 200
    server.stop()
    refused = client.get("/models")
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "rate_limit_unavailable"
    assert client.get("/health").status_code == 200  # never limited, never refused


def test_a_malformed_on_error_stops_the_boot() -> None:
    with pytest.raises(ConfigError, match="NSFW_RATE_LIMIT_ON_ERROR"):
        Settings.from_env({"NSFW_RATE_LIMIT_ON_ERROR": "ajar"})


def test_each_batch_item_counts_against_the_limit(settings: Settings, image_server) -> None:  # type: ignore[no-untyped-def]
    """Finding 14 of issue 22 (fails before it: a batch counted once, so a key limited to 120 requests
    a minute queued 1,248 items a minute through batches). A batch of n costs n; one the allowance
    cannot cover is refused whole with 429 and Retry-After, and nothing of it is classified."""
    from tests.test_review import _jpeg

    fake = FakeClassifier()
    client = create_app(replace(settings, rate_limit="5/minute"), fake).test_client()
    url = image_server.add_file("/i.jpg", _jpeg((1, 2, 3)))
    three = client.post("/predict/batch", json={"items": [{"url": url}] * 3})
    assert three.status_code == 200 and three.headers["X-RateLimit-Remaining"] == "2"
    over = client.post("/predict/batch", json={"items": [{"url": url}] * 3})
    assert over.status_code == 429 and over.get_json()["error"]["code"] == "rate_limited"
    assert int(over.headers["Retry-After"]) > 0 and len(fake.seen) == 1
    assert client.post("/predict/batch", json={"items": [{"url": url}]}).status_code == 200  # 1 left for 1 item

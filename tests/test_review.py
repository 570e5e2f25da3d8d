"""The review queue (nsfw/review/), on SQLite and on a real PostgreSQL: migrations, queueing,
remembered decisions, the API and its races, webhooks, retention, and a failing store."""

from __future__ import annotations

import io
import json
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from prometheus_client import REGISTRY
from sqlalchemy import inspect, select, text
from standardwebhooks.webhooks import Webhook

from nsfw import create_app
from nsfw.config import ConfigError, Settings, parse_api_keys
from nsfw.errors import ReviewQueueFull
from nsfw.imaging.thumbnail import Picture
from nsfw.review import Reviewer
from nsfw.review.queue import Candidate, ReviewQueue
from nsfw.review.tables import metadata, outbox, refs, reviews
from nsfw.review.webhooks import BACKOFF, Sender
from nsfw.store.engine import make_engine
from nsfw.store.migrate import downgrade, upgrade
from tests.servers import PostgresServer
from tests.support import FakeClassifier, ImageServer

PREDICT, MODERATOR, OTHER = "p" * 40, "m" * 40, "o" * 40
KEYS = parse_api_keys(f"app:{PREDICT},alice:{MODERATOR}:predict+review,bob:{OTHER}:review")
APP, ALICE, BOB = ({"X-API-Key": token} for token in (PREDICT, MODERATOR, OTHER))
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_KEY = "k" * 40
UNKNOWN = (0.1, 0.2, 0.3, 0.25, 0.15)  # adult 0.60, safe 0.40: unknown
SAFE = (0.45, 0.0, 0.5, 0.05, 0.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'nsfw.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.database(f"t{time.monotonic_ns()}")


_TINY = Picture(b"x", b"x", 1, 1)  # pictures where the test needs none


def _jpeg(colour: tuple[int, int, int], size: tuple[int, int] = (320, 240)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "JPEG")
    return out.getvalue()


def _settings(settings: Settings, url: str, **more: object) -> Settings:
    return replace(settings, review=True, database_url=url, api_keys=KEYS, secret_key=SECRET_KEY, **more)  # type: ignore[arg-type]


@pytest.fixture()
def apps() -> Iterator[list[Flask]]:
    """Apps with the queue on, closed at the end (their maintenance threads and connections)."""
    made: list[Flask] = []
    yield made
    for app in made:
        app.extensions["nsfw.review"].close()


@pytest.fixture()
def reviewed(settings: Settings, store_url: str, apps: list[Flask]) -> Callable[..., FlaskClient]:
    upgrade(store_url)

    def make(probabilities: tuple[float, ...] = UNKNOWN, **more: object) -> FlaskClient:
        app = create_app(_settings(settings, store_url, **more), FakeClassifier(probabilities=probabilities))
        apps.append(app)
        return app.test_client()

    return make


def _predict(client: FlaskClient, image: bytes, query: str = "detail=true") -> dict:
    answer = client.post(f"/predict?{query}", data=image, headers={**APP, "Content-Type": "image/jpeg"})
    assert answer.status_code == 200, answer.get_json()
    return answer.get_json()


# The schema.


def test_the_migrations_build_the_tables_the_queries_use(store_url: str) -> None:
    upgrade(store_url)
    engine = make_engine(store_url)
    try:
        found = inspect(engine)
        for table in metadata.sorted_tables:
            assert {c["name"] for c in found.get_columns(table.name)} == set(table.columns.keys()), table.name
        index = {i["name"]: i for i in found.get_indexes("reviews")}["reviews_one_pending_per_image"]
        assert index["unique"]
    finally:
        engine.dispose()


def test_the_migration_from_the_previous_revision_keeps_the_items(store_url: str) -> None:
    upgrade(store_url, "0001")
    engine = make_engine(store_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                reviews.insert().values(
                    id="rv_old",
                    created=1.0,
                    kind="unknown",
                    status="pending",
                    sha256="0" * 64,
                    key_name="app",
                    model="mobilenet_v2",
                    model_version="v",
                    scores="{}",
                    verdict="unknown",
                    reason="r",
                )
            )
        assert "webhook_outbox" not in inspect(engine).get_table_names()
        upgrade(store_url)
        engine.dispose()
        assert "webhook_outbox" in inspect(engine).get_table_names()
        with engine.connect() as connection:
            assert connection.execute(select(reviews.c.id)).scalars().all() == ["rv_old"]
    finally:
        engine.dispose()


def test_a_worker_refuses_a_store_that_is_not_migrated(settings: Settings, store_url: str) -> None:
    with pytest.raises(ConfigError, match="db upgrade"):
        create_app(_settings(settings, store_url), FakeClassifier())
    upgrade(store_url, "0001")
    with pytest.raises(ConfigError, match="at revision 0001, not 0007"):
        create_app(_settings(settings, store_url), FakeClassifier())


def test_the_queue_needs_a_key_with_the_review_scope() -> None:
    with pytest.raises(ConfigError, match="NSFW_REVIEW=True: needs a key with the review scope"):
        Settings.from_env({"NSFW_REVIEW": "true"})
    with pytest.raises(ConfigError, match="NSFW_REVIEW=True: needs a key with the review scope"):
        Settings.from_env({"NSFW_REVIEW": "true", "NSFW_API_KEYS": f"app:{PREDICT}"})
    with pytest.raises(ConfigError, match="NSFW_SECRET_KEY"):
        Settings.from_env({"NSFW_REVIEW": "true", "NSFW_API_KEYS": f"mod:{MODERATOR}:review"})
    with pytest.raises(ConfigError, match="NSFW_REVIEW_WEBHOOK_SECRET"):
        Settings.from_env({"NSFW_REVIEW_WEBHOOK_URL": "https://example.com/hook", "NSFW_REVIEW_WEBHOOK_SECRET": "x"})
    with pytest.raises(ConfigError, match=r"NSFW_DATABASE_URL=\(hidden\)"):
        Settings.from_env({"NSFW_DATABASE_URL": "mysql://root:pw@db/nsfw"})


# Queueing and remembering.


def test_an_unknown_image_is_queued_and_a_safe_one_is_not(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed()
    answer = _predict(client, _jpeg((200, 10, 10)), "detail=true&ref=upload-1")
    assert answer["verdict"]["label"] == "unknown" and answer["review"]["status"] == "pending"
    item = client.get(f"/reviews/{answer['review']['id']}", headers=ALICE).get_json()
    assert item["refs"] == [{"ref": "upload-1", "key": "app"}] and item["key"] == "app" and item["kind"] == "unknown"
    assert item["scores"] == answer["scores"] and item["reason"] == answer["verdict"]["reason"]
    picture = client.get(f"/reviews/{item['id']}/thumbnail", headers=ALICE)
    assert picture.content_type == "image/jpeg" and picture.headers["X-Content-Type-Options"] == "nosniff"
    assert picture.headers["Cache-Control"] == "no-store" and max(Image.open(io.BytesIO(picture.data)).size) == 256
    safe = reviewed(SAFE)
    assert "review" not in _predict(safe, _jpeg((10, 200, 10)))
    assert [i["id"] for i in client.get("/reviews", headers=ALICE).get_json()["items"]] == [item["id"]]


def test_without_detail_the_store_is_never_touched(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed()
    flat = _predict(client, _jpeg((1, 2, 3)), "ref=x")
    assert set(flat) == {"drawings", "hentai", "neutral", "porn", "sexy"}
    assert client.get("/reviews", headers=ALICE).get_json()["items"] == []


def test_the_same_bytes_join_the_pending_item_with_their_refs(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed()
    image = _jpeg((50, 60, 70))
    first = _predict(client, image, "detail=true&ref=a")["review"]["id"]
    second = _predict(client, image, "detail=true&ref=b")["review"]["id"]
    again = _predict(client, image, "detail=true&ref=a")["review"]["id"]
    assert first == second == again
    assert client.get(f"/reviews/{first}", headers=ALICE).get_json()["refs"] == [
        {"ref": "a", "key": "app"},
        {"ref": "b", "key": "app"},
    ]


def test_a_decision_is_remembered_as_the_verdict_for_the_same_bytes(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed()
    image = _jpeg((90, 90, 200))
    review_id = _predict(client, image)["review"]["id"]
    decided = client.post(f"/reviews/{review_id}/decision", json={"label": "adult", "note": "nsfw"}, headers=ALICE)
    assert decided.status_code == 200 and decided.get_json()["decided_by"] == "alice"
    answer = _predict(client, image)
    assert answer["verdict"]["label"] == "adult" and answer["tier"] == "human"
    assert answer["verdict"]["reason"].startswith("human review (20") and "alice" not in answer["verdict"]["reason"]
    assert answer["review"] == {"id": review_id, "status": "decided"}  # this key sent it: it may know the item
    assert client.get("/reviews", headers=ALICE).get_json()["items"] == []  # no new item


def test_a_share_of_automatic_verdicts_is_audited(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed(SAFE, review_audit_rate=1.0)
    answer = _predict(client, _jpeg((5, 250, 5)))
    assert answer["verdict"]["label"] == "safe" and answer["review"]["kind"] == "audit"
    assert client.get(f"/reviews/{answer['review']['id']}", headers=ALICE).get_json()["kind"] == "audit"


def test_a_batch_queues_its_unknown_items_with_their_refs(
    reviewed: Callable[..., FlaskClient], image_server: ImageServer
) -> None:
    client = reviewed()
    url = image_server.add_file("/b.jpg", _jpeg((33, 44, 55)))
    body = {"items": [{"url": url, "ref": "one"}, {"url": url, "ref": "two"}, {"url": url}]}
    results = client.post("/predict/batch?detail=true&ref=batch", json=body, headers=APP).get_json()["results"]
    ids = {result["review"]["id"] for result in results}
    assert len(ids) == 1
    item = client.get(f"/reviews/{ids.pop()}", headers=ALICE).get_json()
    assert sorted(ref["ref"] for ref in item["refs"]) == ["batch", "one", "two"] and item["source_url"] == url


def test_a_store_that_fails_during_a_prediction_does_not_fail_it(
    settings: Settings, postgres_server: PostgresServer, apps: list[Flask]
) -> None:
    url = postgres_server.database("failing")
    upgrade(url)
    app = create_app(_settings(settings, url), FakeClassifier())
    apps.append(app)
    client = app.test_client()
    admin = make_engine(postgres_server.admin).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:  # the database goes away under the running app
        connection.execute(text("ALTER DATABASE failing WITH ALLOW_CONNECTIONS false"))
        connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'failing'"))
    admin.dispose()
    before = REGISTRY.get_sample_value("nsfw_review_store_errors_total", {"operation": "enqueue"}) or 0
    answer = _predict(client, _jpeg((7, 7, 7)))
    assert answer["verdict"]["label"] == "unknown" and "error" in answer["review"]
    assert (REGISTRY.get_sample_value("nsfw_review_store_errors_total", {"operation": "enqueue"}) or 0) == before + 1
    listing = client.get("/reviews", headers=ALICE)
    assert listing.status_code == 503 and listing.get_json()["error"]["code"] == "review_store_unavailable"


# The API.


def test_the_api_refuses_keys_without_the_review_scope(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed()
    for method, path in (("GET", "/reviews"), ("GET", "/reviews/export"), ("POST", "/reviews/x/decision")):
        assert client.open(path, method=method, headers=APP).status_code == 403
        assert client.open(path, method=method).status_code == 401
    assert client.get("/reviews/nope", headers=ALICE).get_json()["error"]["code"] == "not_found"


def test_claims_decisions_and_deletions(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed()
    review_id = _predict(client, _jpeg((1, 100, 200)))["review"]["id"]
    assert client.post(f"/reviews/{review_id}/claim", headers=ALICE).get_json()["claimed_by"] == "alice"
    taken = client.post(f"/reviews/{review_id}/claim", headers=BOB)
    assert taken.status_code == 409 and taken.get_json()["error"]["code"] == "claimed"
    assert client.post(f"/reviews/{review_id}/decision", json={"label": "safe"}, headers=BOB).status_code == 409
    bad = client.post(f"/reviews/{review_id}/decision", json={"label": "maybe"}, headers=ALICE)
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "invalid_label"
    assert client.post(f"/reviews/{review_id}/decision", json={"label": "safe"}, headers=ALICE).status_code == 200
    again = client.post(f"/reviews/{review_id}/decision", json={"label": "adult"}, headers=ALICE)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "already_decided"
    assert client.delete(f"/reviews/{review_id}", headers=BOB).status_code == 200
    assert client.get(f"/reviews/{review_id}", headers=ALICE).status_code == 404


def test_every_decision_and_deletion_is_in_the_audit_log(store_url: str) -> None:
    upgrade(store_url)
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=False)
    review_id = _enqueue(queue, "a" * 64)
    queue.decide(review_id, "alice", "adult", "note")
    log = queue.audit_log(review_id)
    assert [(entry["actor"], entry["action"]) for entry in log] == [("alice", "decided")]
    queue.delete(review_id, "bob")
    assert [(entry["actor"], entry["action"]) for entry in queue.audit_log(review_id)][-1] == ("bob", "deleted")
    queue.engine.dispose()


def test_pages_go_oldest_first_with_a_cursor(store_url: str) -> None:
    upgrade(store_url)
    now = [1000.0]
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=False, clock=lambda: now[0])
    ids = []
    for n in range(5):
        now[0] += 1
        ids.append(_enqueue(queue, f"{n:064x}"))
    first, cursor = queue.page("pending", 2, None)
    second, cursor2 = queue.page("pending", 2, cursor)
    third, cursor3 = queue.page("pending", 2, cursor2)
    assert [i["id"] for i in first + second + third] == ids and cursor3 is None
    queue.engine.dispose()


def test_sixteen_moderators_racing_get_one_decision(store_url: str) -> None:
    upgrade(store_url)
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=True)
    review_id = _enqueue(queue, "b" * 64)
    start = threading.Barrier(16)
    outcomes: list[str] = []

    def decide(n: int) -> None:
        start.wait()
        try:
            queue.decide(review_id, f"moderator{n}", "adult" if n % 2 else "safe")
            outcomes.append("200")
        except Exception as exc:  # noqa: BLE001 - the outcome is the point
            outcomes.append(getattr(exc, "code", repr(exc)))

    threads = [threading.Thread(target=decide, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["200"] + ["already_decided"] * 15
    with queue.engine.connect() as connection:
        assert len(connection.execute(select(outbox)).all()) == 1  # one message, for the one decision
    assert len(queue.audit_log(review_id)) == 1
    queue.engine.dispose()


def test_export_has_every_decided_item(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed()
    for n, label in enumerate(("adult", "safe")):
        review_id = _predict(client, _jpeg((n, 20, 30)), f"detail=true&ref=r{n}")["review"]["id"]
        client.post(f"/reviews/{review_id}/decision", json={"label": label}, headers=ALICE)
    lines = client.get("/reviews/export?format=jsonl", headers=ALICE)
    assert lines.content_type == "application/x-ndjson"
    rows = [json.loads(line) for line in lines.get_data(as_text=True).splitlines()]
    assert [row["label"] for row in rows] == ["adult", "safe"] and rows[0]["decided_by"] == "alice"
    assert set(rows[0]["scores"]) == {"drawings", "hentai", "neutral", "porn", "sexy"}
    table = client.get("/reviews/export?format=csv", headers=ALICE).get_data(as_text=True).splitlines()
    assert table[0].startswith("id,sha256,model") and len(table) == 3


def test_thumbnails_go_after_retention_and_the_memory_stays(store_url: str) -> None:
    upgrade(store_url)
    now = [1_000_000.0]
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=False, clock=lambda: now[0])
    decided, waiting = _enqueue(queue, "c" * 64), _enqueue(queue, "d" * 64)
    queue.decide(decided, "alice", "adult")
    now[0] += 31 * 86400
    assert queue.retain(retention_days=30, pending_days=0, audit_days=36500)["thumbnails"] == 1
    assert queue.thumbnail(decided) is None and queue.thumbnail(waiting) is not None
    assert queue.remembered("c" * 64) is not None and queue.get(decided)["label"] == "adult"
    queue.engine.dispose()


# Webhooks.


class Receiver:
    """A webhook endpoint on the image server answering a scripted list of statuses (0: the
    connection dropped, as a receiver that is down), recording what it was sent."""

    def __init__(self, server: ImageServer, statuses: list[int]) -> None:
        self.statuses, self.received = statuses, []
        self.url = server.url("/hook")
        server.routes["/hook"] = self._handle

    def _handle(self, req) -> None:  # type: ignore[no-untyped-def]
        body = req.rfile.read(int(req.headers["Content-Length"]))
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 0:
            req.close_connection = True
            req.connection.shutdown(2)
            return
        self.received.append((dict(req.headers), body, status))
        req.send_response(status)
        req.send_header("Content-Length", "0")
        req.end_headers()


def _enqueue(queue: ReviewQueue, sha256: str) -> str:
    from nsfw.review.queue import Candidate

    candidate = Candidate(sha256, "unknown", "ref", "app", None, "mobilenet_v2", "v", {"porn": 0.5}, "unknown", "r")
    picture = _jpeg((1, 1, 1))
    return queue.enqueue(candidate, lambda: {0: Picture(picture, picture, 320, 240)}).review_id


def _sender(queue: ReviewQueue, settings: Settings, url: str, clock: Callable[[], float]) -> Sender:
    from nsfw.pipeline.service import build_service
    from nsfw.review import _poster

    return Sender(queue.engine, url, SECRET, _poster(build_service(settings).fetcher), clock=clock, timeout=2)


def test_a_receiver_down_then_failing_then_up_gets_the_message_once_signed(
    settings: Settings, store_url: str, image_server: ImageServer
) -> None:
    upgrade(store_url)
    now = [time.time()]  # near the real time: the receiver checks the signature's timestamp
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=True, clock=lambda: now[0])
    receiver = Receiver(image_server, [0, 500, 200])
    sender = _sender(queue, settings, receiver.url, lambda: now[0])
    review_id = _enqueue(queue, "e" * 64)
    queue.decide(review_id, "alice", "adult")
    assert sender.deliver_due() == 1  # down
    assert sender.deliver_due() == 0  # not due yet
    now[0] += BACKOFF[0]
    assert BACKOFF[0] <= 10 and sender.deliver_due() == 1  # 500
    now[0] += BACKOFF[1]
    assert sender.deliver_due() == 1  # 200
    headers, body, _ = receiver.received[-1]
    payload = Webhook(SECRET).verify(body, {k.lower(): v for k, v in headers.items()})
    now[0] += 86400
    assert sender.deliver_due() == 0  # delivered: never again
    assert [status for _, _, status in receiver.received] == [500, 200]
    assert payload["type"] == "review.decided" and payload["data"]["id"] == review_id
    assert payload["data"]["label"] == "adult" and payload["data"]["moderator"] == "alice"
    assert "thumbnail" not in json.dumps(payload)
    (delivery,) = queue.deliveries()
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3
    queue.engine.dispose()


def test_a_restart_between_decision_and_delivery_loses_nothing(
    settings: Settings, store_url: str, image_server: ImageServer
) -> None:
    upgrade(store_url)
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=True)
    review_id = _enqueue(queue, "f" * 64)
    queue.decide(review_id, "alice", "safe")
    queue.engine.dispose()  # the worker is gone before its sender ran
    receiver = Receiver(image_server, [])
    restarted = ReviewQueue(make_engine(store_url), lease=300, webhooks=True)
    senders = [_sender(restarted, settings, receiver.url, time.time) for _ in range(2)]  # two workers
    assert sum(sender.deliver_due() for sender in senders) == 1
    assert sum(sender.deliver_due() for sender in senders) == 0
    assert len(receiver.received) == 1
    restarted.engine.dispose()


def test_a_message_that_never_gets_through_is_kept_as_failed(
    settings: Settings, store_url: str, image_server: ImageServer
) -> None:
    upgrade(store_url)
    now = [0.0]
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=True, clock=lambda: now[0])
    receiver = Receiver(image_server, [503] * 20)
    sender = _sender(queue, settings, receiver.url, lambda: now[0])
    queue.decide(_enqueue(queue, "9" * 64), "alice", "adult")
    for _ in range(len(BACKOFF) + 1):
        assert sender.deliver_due() == 1
        now[0] += max(BACKOFF)
    assert sender.deliver_due() == 0
    (delivery,) = queue.deliveries()
    assert delivery["status"] == "failed" and delivery["attempts"] == len(BACKOFF) + 1
    assert 20 * 3600 < sum(BACKOFF) < 26 * 3600  # about a day of retries
    queue.engine.dispose()


def test_the_webhook_url_is_guarded_like_an_image_url(settings: Settings, store_url: str) -> None:
    upgrade(store_url)
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=True)
    closed = replace(settings, allowed_networks=())
    sender = _sender(queue, closed, "http://127.0.0.1/hook", time.time)
    queue.decide(_enqueue(queue, "8" * 64), "alice", "adult")
    sender.deliver_due()
    (delivery,) = queue.deliveries()
    assert delivery["status"] == "pending" and delivery["last_error"].startswith("url_not_allowed")
    queue.engine.dispose()


def test_reviewer_is_the_only_thing_the_service_sees() -> None:
    """The prediction path imports nothing of the review package (STYLE.md): it gets a hook."""
    import nsfw.pipeline

    for module in Path(nsfw.pipeline.__file__).parent.glob("*.py"):
        source = module.read_text()
        assert "nsfw.review" not in source and "import review" not in source, module.name
    assert callable(Reviewer)


def test_plain_postgresql_urls_mean_psycopg_3() -> None:
    for given in (
        "postgresql://u:p@db:25060/reviews?sslmode=require",
        "postgres://u:p@db:25060/reviews?sslmode=require",
    ):
        assert Settings(database_url=given).database == "postgresql+psycopg://u:p@db:25060/reviews?sslmode=require"
    assert Settings(data_dir=Path("/srv/nsfw")).database == "sqlite:////srv/nsfw/nsfw.db"


def test_db_upgrade_from_the_command_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support import REPO

    env = {"NSFW_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "nsfw", "db", "upgrade"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "at revision 0007 (head 0007)" in done.stdout and (tmp_path / "nsfw.db").exists()


def test_a_reverted_decision_is_pending_again_forgotten_and_heard(
    settings: Settings, store_url: str, image_server: ImageServer
) -> None:
    upgrade(store_url)
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=True)
    receiver = Receiver(image_server, [])
    sender = _sender(queue, settings, receiver.url, time.time)
    review_id = _enqueue(queue, "7" * 64)
    queue.decide(review_id, "alice", "adult")
    item = queue.revert(review_id, "bob")
    assert item["status"] == "pending" and item["label"] is None and queue.remembered("7" * 64) is None
    with pytest.raises(Exception, match=review_id) as refused:
        queue.revert(review_id, "bob")
    assert getattr(refused.value, "code", "") == "not_decided"
    assert sender.deliver_due() == 2
    events = [json.loads(body) for _, body, _ in receiver.received]
    assert [event["type"] for event in events] == ["review.decided", "review.reverted"]
    assert events[1]["data"]["label"] == "adult" and events[1]["data"]["reverted_by"] == "bob"
    assert [entry["action"] for entry in queue.audit_log(review_id)] == ["decided", "reverted"]
    queue.decide(review_id, "carol", "safe")  # decided anew
    assert queue.remembered("7" * 64).label == "safe"  # type: ignore[union-attr]
    queue.engine.dispose()


def test_the_workers_head_is_alembics() -> None:
    from nsfw.store.migrate import HEAD, alembic_head

    assert alembic_head() == HEAD


# Issue 22: the loop can be trusted.


@dataclass
class _ByBrightness(FakeClassifier):
    """Scores each frame by its brightness: a bright frame is mostly porn (adult 0.65: unknown at the
    defaults), a dark one neutral (safe)."""

    def predict(self, batch):  # type: ignore[no-untyped-def]
        import numpy as np

        self.seen.append(batch)
        bright = (0.05, 0.05, 0.30, 0.50, 0.10)
        dark = (0.02, 0.0, 0.97, 0.0, 0.01)
        return np.asarray([bright if frame.mean() > 0.5 else dark for frame in batch], np.float32)


def _gif(colours: list[tuple[int, int, int]], size: tuple[int, int] = (120, 90)) -> bytes:
    frames = [Image.new("RGB", size, colour) for colour in colours]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


def test_an_animation_is_queued_as_what_the_model_judged(settings: Settings, store_url: str, apps: list[Flask]) -> None:
    """Finding 4 of issue 22 (fails before it: the verdict was the worst of the frames, but the item's
    thumbnail was frame 0 and nothing said it was an animation, so a decoy first frame was judged and
    its bytes allow-listed). The item shows the frame that decided, every classified frame with its
    scores, and its frame count; the page says it is an animation before any decision."""
    upgrade(store_url)
    app = create_app(_settings(settings, store_url), _ByBrightness())
    apps.append(app)
    client = app.test_client()
    decoy = _gif([(0, 0, 0), (10, 10, 10), (255, 255, 255)])
    answer = client.post("/predict?detail=true", data=decoy, headers={**APP, "Content-Type": "image/gif"}).get_json()
    assert answer["verdict"]["label"] == "unknown" and answer["frames"]["chosen"] == 2
    item = client.get(f"/reviews/{answer['review']['id']}", headers=ALICE).get_json()
    assert item["frames"]["count"] == 3 and item["frames"]["chosen"] == 2
    assert [frame["index"] for frame in item["frames"]["classified"]] == [0, 1, 2]
    assert (
        item["frames"]["classified"][2]["adult"] == pytest.approx(0.65)
        and item["frames"]["classified"][0]["adult"] < 0.1
    )
    picture = Image.open(io.BytesIO(client.get(f"/reviews/{item['id']}/thumbnail", headers=ALICE).data))
    assert min(picture.convert("L").getextrema()) > 200  # the bright frame that decided, not the decoy
    strip = [client.get(f"/reviews/{item['id']}/frames/{n}", headers=ALICE) for n in range(3)]
    assert [answer.content_type for answer in strip] == ["image/jpeg"] * 3
    brightness = [Image.open(io.BytesIO(answer.data)).convert("L").getextrema()[1] for answer in strip]
    assert brightness[0] < 40 and brightness[2] > 200
    assert client.get(f"/reviews/{item['id']}/frames/3", headers=ALICE).status_code == 404

    from nsfw.review import moderators

    moderators.add(app.extensions["nsfw.review"].queue.engine, "carol", "correct horse battery")
    page = client.get("/review/login").get_data(as_text=True)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    client.post("/review/login", data={"username": "carol", "password": "correct horse battery", "csrf_token": token})
    item_page = client.get(f"/review/items/{item['id']}").get_data(as_text=True)
    assert "Animation: 3 frames, 3 classified. The picture is frame 2" in item_page
    assert item_page.count(f"/reviews/{item['id']}/frames/") == 3


def test_a_still_image_has_one_frame_and_no_strip(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed()
    item_id = _predict(client, _jpeg((40, 50, 60)))["review"]["id"]
    item = client.get(f"/reviews/{item_id}", headers=ALICE).get_json()
    assert item["frames"] == {"count": 1, "chosen": 0, "classified": []}
    assert client.get(f"/reviews/{item_id}/frames/0", headers=ALICE).status_code == 404


def test_of_two_undos_at_once_exactly_one_wins(store_url: str) -> None:
    """Finding 7 of issue 22 (fails before it on PostgreSQL: the revert's UPDATE never checked its row
    count, so racing undos all succeeded, with an audit row and a review.reverted message each)."""
    upgrade(store_url)
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=True)
    review_id = _enqueue(queue, "1" * 64)
    queue.decide(review_id, "alice", "adult")
    start = threading.Barrier(16)
    outcomes: list[str] = []

    def undo(n: int) -> None:
        start.wait()
        try:
            queue.revert(review_id, f"moderator{n}")
            outcomes.append("200")
        except Exception as exc:  # noqa: BLE001 - the outcome is the point
            outcomes.append(getattr(exc, "code", repr(exc)))

    threads = [threading.Thread(target=undo, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["200"] + ["not_decided"] * 15
    assert [entry["action"] for entry in queue.audit_log(review_id)] == ["decided", "reverted"]
    with queue.engine.connect() as connection:
        events = connection.execute(select(outbox.c.event)).scalars().all()
    assert sorted(events) == ["review.decided", "review.reverted"]
    queue.engine.dispose()


def test_an_undo_that_meets_the_image_pending_again_is_a_clear_409(reviewed: Callable[..., FlaskClient]) -> None:
    """Finding 7 of issue 22 (fails before it: the unique pending index refused the UPDATE, and the
    API answered 503 review_store_unavailable, forever). The same bytes pending again as another item
    (queued between the decision and a remembered lookup) make the undo a 409 pending_twin."""
    client = reviewed()
    queue: ReviewQueue = client.application.extensions["nsfw.review"].queue
    sha256 = "2" * 64
    first = _enqueue(queue, sha256)
    assert client.post(f"/reviews/{first}/decision", json={"label": "safe"}, headers=ALICE).status_code == 200
    twin = _enqueue(queue, sha256)
    assert twin != first
    undo = client.post(f"/reviews/{first}/revert", headers=ALICE)
    assert undo.status_code == 409 and undo.get_json()["error"]["code"] == "pending_twin"
    assert client.get(f"/reviews/{first}", headers=ALICE).get_json()["status"] == "decided"


def test_one_key_cannot_flood_the_humans(reviewed: Callable[..., FlaskClient]) -> None:
    """Finding 9 of issue 22 (fails before it: per-request thresholds let one key queue any number of
    images). Past NSFW_REVIEW_MAX_PENDING_PER_KEY that key's new items are not queued, the answer says
    review_queue_full and stays 200; other keys, and that key's repeats of pending images, go on."""
    client = reviewed(review_max_pending_per_key=2)
    images = [_jpeg((n * 40, 10, 200)) for n in range(3)]
    answers = [_predict(client, image) for image in images]
    assert [answer["review"].get("status") for answer in answers] == ["pending", "pending", None]
    assert answers[2]["review"]["error"]["code"] == "review_queue_full"
    assert _predict(client, images[0])["review"]["status"] == "pending"  # joining is not a new item
    other = client.post(
        "/predict?detail=true", data=images[2], headers={**ALICE, "Content-Type": "image/jpeg"}
    ).get_json()
    assert other["review"]["status"] == "pending"
    full = REGISTRY.get_sample_value("nsfw_review_not_queued_total", {"code": "review_queue_full"})
    assert full is not None and full >= 1


def test_refs_belong_to_their_key_and_are_capped(
    settings: Settings, store_url: str, apps: list[Flask], image_server: ImageServer
) -> None:
    """Finding 9 of issue 22 (fails before it: any key could attach any number of refs to an item, the
    webhook carried them as bare strings). Each ref keeps the key that sent it, each key at most
    NSFW_REVIEW_MAX_REFS on an item (the next is answered with review_refs_full), so one key cannot
    crowd out another's, and the webhook carries {"ref", "key"} objects."""
    upgrade(store_url)
    receiver = Receiver(image_server, [])
    app = create_app(
        _settings(
            settings, store_url, review_max_refs=2, review_webhook_url=receiver.url, review_webhook_secret=SECRET
        ),
        FakeClassifier(),
    )
    apps.append(app)
    client = app.test_client()
    image = _jpeg((77, 66, 55))
    ask = {"Content-Type": "image/jpeg"}
    review_id = _predict(client, image, "detail=true&ref=same")["review"]["id"]
    _predict(client, image, "detail=true&ref=second")
    full = _predict(client, image, "detail=true&ref=third")
    assert full["review"]["id"] == review_id and full["review"]["error"]["code"] == "review_refs_full"
    assert _predict(client, image, "detail=true&ref=same")["review"] == {"id": review_id, "status": "pending"}
    for ref in ("same", "mine"):  # another key's room is its own
        other = client.post(f"/predict?detail=true&ref={ref}", data=image, headers={**ALICE, **ask}).get_json()
        assert other["review"] == {"id": review_id, "status": "pending"}
    item = client.get(f"/reviews/{review_id}", headers=ALICE).get_json()
    assert item["refs"] == [
        {"ref": "same", "key": "app"},
        {"ref": "second", "key": "app"},
        {"ref": "same", "key": "alice"},
        {"ref": "mine", "key": "alice"},
    ]
    client.post(f"/reviews/{review_id}/decision", json={"label": "adult"}, headers=ALICE)
    deadline = time.monotonic() + 10
    while not receiver.received and time.monotonic() < deadline:  # the maintenance thread sends it
        time.sleep(0.05)
    payload = json.loads(receiver.received[-1][1])
    assert payload["data"]["refs"] == item["refs"]


def test_a_remembered_decision_tells_a_key_nothing_of_others(
    settings: Settings, store_url: str, apps: list[Flask]
) -> None:
    """Finding 9 of issue 22 (fails before it: a remembered decision's reason named the moderator and
    the item to any predict key, and `"cache": "hit"` told a key whether another had sent the bytes)."""
    upgrade(store_url)
    app = create_app(_settings(settings, store_url, cache_size=16), FakeClassifier())
    apps.append(app)
    client = app.test_client()
    image = _jpeg((12, 34, 56))
    review_id = _predict(client, image)["review"]["id"]
    client.post(f"/reviews/{review_id}/decision", json={"label": "adult"}, headers=ALICE)
    mine = _predict(client, image)
    theirs = client.post("/predict?detail=true", data=image, headers={**ALICE, "Content-Type": "image/jpeg"}).get_json()
    for answer in (mine, theirs):
        assert answer["tier"] == "human" and answer["verdict"]["label"] == "adult"
        assert re.fullmatch(r"human review \(\d{4}-\d\d-\d\dT[\d:.]+Z\)", answer["verdict"]["reason"])
        assert "alice" not in json.dumps(answer) and "cache" not in answer
    assert mine["review"] == {"id": review_id, "status": "decided"}  # its own item
    assert theirs["review"] == {"status": "decided"}  # another key's item: no id
    fresh = client.post(
        "/predict?detail=true", data=_jpeg((1, 200, 3)), headers={**ALICE, "Content-Type": "image/jpeg"}
    ).get_json()
    seen = _predict(client, _jpeg((1, 200, 3)))
    assert "cache" not in fresh and "cache" not in seen


def test_source_urls_are_kept_without_their_query(
    reviewed: Callable[..., FlaskClient], image_server: ImageServer
) -> None:
    """Finding 10 of issue 22 (fails before it: a signed URL's signature was stored for good)."""
    client = reviewed()
    url = image_server.add_file("/signed.jpg", _jpeg((3, 30, 90)))
    signed = f"{url}?X-Amz-Signature=s3cr3t&X-Amz-Expires=60#frag"
    answer = client.post("/predict?detail=true", json={"url": signed}, headers=APP).get_json()
    item = client.get(f"/reviews/{answer['review']['id']}", headers=ALICE).get_json()
    assert item["source_url"] == url and "s3cr3t" not in json.dumps(item)


def test_deleting_an_item_is_heard(settings: Settings, store_url: str, image_server: ImageServer) -> None:
    """Finding 10 of issue 22 (fails before it: deleting a decided item forgot the remembered decision
    and the client app never heard): review.deleted, with the status and label it had."""
    upgrade(store_url)
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=True)
    receiver = Receiver(image_server, [])
    sender = _sender(queue, settings, receiver.url, time.time)
    review_id = _enqueue(queue, "3" * 64)
    queue.decide(review_id, "alice", "adult")
    queue.delete(review_id, "bob")
    assert queue.remembered("3" * 64) is None
    assert sender.deliver_due() == 2
    events = [json.loads(body) for _, body, _ in receiver.received]
    assert [event["type"] for event in events] == ["review.decided", "review.deleted"]
    assert events[1]["data"]["label"] == "adult" and events[1]["data"]["deleted_by"] == "bob"
    queue.engine.dispose()


def test_retention_bounds_everything_the_store_keeps_and_drops_nothing_silently(
    settings: Settings, store_url: str, image_server: ImageServer
) -> None:
    """Finding 10 and 16 of issue 22 (fails before it: pending items, refs, audit rows and delivered
    webhook messages grew without bound). Pending items expire (audited, review.expired sent), pictures
    and refs of old decisions go, expired items and old audit rows and sent messages go."""
    upgrade(store_url)
    now = [time.time()]
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=True, clock=lambda: now[0])
    receiver = Receiver(image_server, [])
    sender = _sender(queue, settings, receiver.url, lambda: now[0])
    waiting, decided = _enqueue(queue, "4" * 64), _enqueue(queue, "5" * 64)
    queue.decide(decided, "alice", "safe")
    assert sender.deliver_due() == 1
    now[0] += 31 * 86400
    done = queue.retain(retention_days=30, pending_days=30, audit_days=30)
    assert done == {"expired": 1, "thumbnails": 1, "expired_items": 0, "audit": 1, "outbox": 1}
    expired = queue.get(waiting)
    assert expired["status"] == "expired" and queue.audit_log(waiting)[-1]["action"] == "expired"
    assert queue.get(decided)["refs"] == [] and queue.thumbnail(decided) is None
    assert queue.remembered("5" * 64) is not None  # the memory stays
    assert sender.deliver_due() == 1
    assert json.loads(receiver.received[-1][1])["type"] == "review.expired"
    now[0] += 31 * 86400
    done = queue.retain(retention_days=30, pending_days=30, audit_days=30)
    assert done["expired_items"] == 1 and done["outbox"] == 1
    with pytest.raises(Exception, match=waiting):
        queue.get(waiting)
    queue.engine.dispose()


def test_the_export_streams_fifty_thousand_items_in_little_memory(
    settings: Settings, tmp_path: Path, apps: list[Flask]
) -> None:
    """Finding 15 of issue 22 (fails before it: every column of every row, thumbnails too, was read
    into memory, the refs one query per row, and the body joined whole: +770 MB for 50,000 items).
    Now the rows stream with only the exported columns: 50,000 items stay under +50 MB."""
    from tests.support import MemoryWatch

    url = f"sqlite:///{tmp_path / 'data' / 'nsfw.db'}"
    upgrade(url)
    engine = make_engine(url)
    scores = json.dumps({"drawings": 0.1, "hentai": 0.2, "neutral": 0.3, "porn": 0.25, "sexy": 0.15})
    picture = bytes(range(256)) * 40  # 10 KB a thumbnail, as a real one
    with engine.begin() as connection:
        for start in range(0, 50_000, 5000):
            rows = [
                {
                    "id": f"rv_{n:016x}",
                    "created": 1000.0 + n,
                    "kind": "unknown",
                    "status": "decided",
                    "sha256": f"{n:064x}",
                    "key_name": "app",
                    "model": "mobilenet_v2",
                    "model_version": "v",
                    "scores": scores,
                    "verdict": "unknown",
                    "reason": "r",
                    "thumbnail": picture,
                    "decided": 2000.0 + n,
                    "label": "adult" if n % 2 else "safe",
                    "decided_by": "alice",
                }
                for n in range(start, start + 5000)
            ]
            connection.execute(reviews.insert(), rows)
            connection.execute(
                refs.insert(), [{"review_id": r["id"], "key_name": "app", "ref": "u", "added": 1.0} for r in rows]
            )
    engine.dispose()
    app = create_app(_settings(settings, url), FakeClassifier())
    apps.append(app)
    client = app.test_client()
    lines = 0
    with MemoryWatch() as watch:
        answer = client.get("/reviews/export?format=jsonl", headers=ALICE, buffered=False)
        assert answer.status_code == 200
        tail = b""
        for chunk in answer.response:
            lines += chunk.count(b"\n")
            tail = (tail + chunk)[-2000:]
        answer.close()
    assert lines == 50_000 and json.loads(tail.splitlines()[-1])["refs"] == [{"ref": "u", "key": "app"}]
    assert watch.growth < 50 * 1024 * 1024, f"+{watch.growth >> 20} MiB"
    table = client.get("/reviews/export?format=csv", headers=ALICE).get_data(as_text=True).splitlines()
    assert len(table) == 50_001 and table[0].endswith("drawings,hentai,neutral,porn,sexy")


def test_a_full_disk_is_survived_and_the_wal_given_back(settings: Settings, tmp_path: Path, apps: list[Flask]) -> None:
    """Finding 16 of issue 22 (fails before it: SQLite's WAL grew and was never truncated). A store
    that is full answers predictions with review.error; once there is room again the queue works
    without a restart, and the maintenance pass checkpoints and truncates the WAL."""
    from sqlalchemy import event

    url = f"sqlite:///{tmp_path / 'data' / 'nsfw.db'}"
    upgrade(url)
    app = create_app(_settings(settings, url), FakeClassifier())
    apps.append(app)
    client = app.test_client()
    maintenance = app.extensions["nsfw.review"]
    engine = maintenance.queue.engine
    for n in range(60):  # a WAL of a few MB
        _predict(client, _jpeg((n * 6, 255 - n * 6, n), (640, 480)))
    wal = tmp_path / "data" / "nsfw.db-wal"
    assert wal.stat().st_size > 1024 * 1024
    import sqlite3

    other_worker = sqlite3.connect(tmp_path / "data" / "nsfw.db")  # keeps the WAL file when this one's pool closes
    other_worker.execute("SELECT count(*) FROM reviews").fetchall()
    room = {"pages": 1}

    def cap(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.execute("SELECT count(*) FROM reviews").fetchall()  # the file's size as it is now
        dbapi_connection.execute(f"PRAGMA max_page_count={room['pages']}")

    event.listen(engine, "connect", cap)
    engine.dispose()  # every new connection sees a full disk
    noise = io.BytesIO()  # an item whose pictures need new pages, whatever room the file has left
    Image.frombytes("RGB", (640, 480), random.Random(7).randbytes(640 * 480 * 3)).save(noise, "JPEG")
    full = _predict(client, noise.getvalue())
    assert full["verdict"]["label"] == "unknown" and full["review"]["error"]["code"] == "review_store_unavailable", full
    room["pages"] = 1 << 30
    engine.dispose()
    maintenance.checkpoint()  # the maintenance thread's duty, every CHECKPOINT_EVERY seconds
    assert wal.stat().st_size == 0
    assert _predict(client, noise.getvalue())["review"]["status"] == "pending"
    other_worker.close()


def test_the_trust_migration_keeps_the_data_both_ways(store_url: str) -> None:
    """0003 -> 0004 keeps items, refs (their key: the item's own), moderators and the outbox; 0004 ->
    0003 keeps the refs too (found by the review of issue 22: on SQLite the downgrade rebuilt `reviews`
    and the cascade took every ref)."""
    upgrade(store_url, "0003")
    engine = make_engine(store_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO reviews (id, created, kind, status, sha256, key_name, model, model_version, scores,"
                " verdict, reason) VALUES ('rv_a', 1, 'unknown', 'pending', :sha, 'app', 'm', 'v', '{}',"
                " 'unknown', 'r')"
            ),
            {"sha": "a" * 64},
        )
        connection.execute(
            text("INSERT INTO review_refs (review_id, ref, added) VALUES ('rv_a', 'u1', 1), ('rv_a', 'u2', 2)")
        )
        connection.execute(text("INSERT INTO moderators (name, password_hash, created) VALUES ('alice', 'x', 1)"))
    engine.dispose()
    upgrade(store_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT key_name, ref FROM review_refs ORDER BY ref")).all() == [
            ("app", "u1"),
            ("app", "u2"),
        ]
        assert connection.execute(text("SELECT generation FROM moderators")).scalar() == "0"
        assert connection.execute(text("SELECT pending_since FROM reviews")).scalar() == 1
    engine.dispose()
    downgrade(store_url, "0003")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT ref FROM review_refs ORDER BY ref")).scalars().all() == ["u1", "u2"]
        assert connection.execute(text("SELECT count(*) FROM reviews")).scalar() == 1
    engine.dispose()


def _candidate(sha256: str, key: str = "app", ref: str | None = "ref") -> Candidate:
    return Candidate(sha256, "unknown", ref, key, None, "mobilenet_v2", "v", {"porn": 0.5}, "unknown", "r")


def test_an_undone_decision_waits_its_whole_time_again(store_url: str) -> None:
    """Found by the review of issue 22: an old item undone was expired within the hour, as expiry
    counted from its first queueing; it counts from the undo."""
    upgrade(store_url)
    now = [1_000_000.0]
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=False, clock=lambda: now[0])
    review_id = _enqueue(queue, "6" * 64)
    now[0] += 29 * 86400
    queue.decide(review_id, "alice", "adult")
    now[0] += 2 * 86400
    queue.revert(review_id, "bob")
    now[0] += 60
    assert queue.retain(retention_days=30, pending_days=30, audit_days=365)["expired"] == 0
    assert queue.get(review_id)["status"] == "pending"
    now[0] += 30 * 86400
    assert queue.retain(retention_days=30, pending_days=30, audit_days=365)["expired"] == 1
    queue.engine.dispose()


def test_a_key_at_its_cap_learns_nothing_of_what_others_have_pending(store_url: str) -> None:
    """Found by the review of issue 22: a key at its cap still joined another key's pending item, so
    `pending` for those bytes and `review_queue_full` for new ones told it what others had sent."""
    upgrade(store_url)
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=False, max_pending_per_key=1)
    theirs = queue.enqueue(_candidate("7" * 64, key="alice"), lambda: {0: _TINY}).review_id
    mine = queue.enqueue(_candidate("8" * 64), lambda: {0: _TINY}).review_id
    with pytest.raises(ReviewQueueFull):
        queue.enqueue(_candidate("7" * 64), lambda: {0: _TINY})  # alice's: the same answer as new bytes
    with pytest.raises(ReviewQueueFull):
        queue.enqueue(_candidate("9" * 64), lambda: {0: _TINY})
    assert queue.enqueue(_candidate("8" * 64, ref="again"), lambda: {0: _TINY}).review_id == mine  # its own
    assert queue.enqueue(_candidate("7" * 64, key="alice", ref="2"), lambda: {0: _TINY}).review_id == theirs
    queue.engine.dispose()


def test_the_caps_hold_under_racing_requests(store_url: str) -> None:
    """Found by the review of issue 22 (on PostgreSQL 12 racing enqueues made 12 items with a cap of 3,
    8 racing refs 7 with a cap of 3, and racing equal refs raised IntegrityError, answered as a store
    failure). The cap is counted and written in one serialised transaction."""
    upgrade(store_url)
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=False, max_pending_per_key=3, max_refs=3)
    outcomes: list[str] = []

    def race(calls: list[Callable[[], object]]) -> None:
        start = threading.Barrier(len(calls))

        def run(call: Callable[[], object]) -> None:
            start.wait()
            try:
                result = call()
                outcomes.append("kept" if getattr(result, "ref_kept", True) else "not kept")
            except Exception as exc:  # noqa: BLE001 - the outcome is the point
                outcomes.append(getattr(exc, "code", repr(exc)))

        threads = [threading.Thread(target=run, args=(call,)) for call in calls]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)

    race([lambda n=n: queue.enqueue(_candidate(f"{n:064x}"), lambda: {0: _TINY}) for n in range(12)])
    assert sorted(outcomes) == ["kept"] * 3 + ["review_queue_full"] * 9
    assert queue.depth()[0] == 3
    outcomes.clear()
    shared = "b" * 64
    race([lambda n=n: queue.enqueue(_candidate(shared, key="bob", ref=f"r{n}"), lambda: {0: _TINY}) for n in range(8)])
    (item,) = [item for item in queue.page("pending", 10, None)[0] if item["sha256"] == shared]
    assert len(item["refs"]) == 3 and sorted(outcomes) == ["kept"] * 3 + ["not kept"] * 5
    outcomes.clear()
    race([lambda: queue.enqueue(_candidate(f"{1:064x}", key="alice", ref="same"), lambda: {0: _TINY})] * 8)
    assert outcomes == ["kept"] * 8
    queue.engine.dispose()


def test_the_checkpoint_never_holds_the_writers_back(tmp_path: Path) -> None:
    """Found by the review of issue 22 (fails before this: with a long read open, the minute's TRUNCATE
    checkpoint waited the 5 s busy timeout, and every writer waited behind it). It does what it can
    at once, and says whether it truncated."""
    import sqlite3

    from nsfw.store.engine import checkpoint

    url = f"sqlite:///{tmp_path / 'data' / 'nsfw.db'}"
    upgrade(url)
    queue = ReviewQueue(make_engine(url), lease=300, webhooks=False)
    _enqueue(queue, "c" * 64)
    reader = sqlite3.connect(tmp_path / "data" / "nsfw.db", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM reviews").fetchall()  # a long read, as an export's
    _enqueue(queue, "d" * 64)
    started = time.monotonic()
    assert checkpoint(queue.engine) is False
    assert time.monotonic() - started < 2.5  # it waited 5.0 s before
    _enqueue(queue, "e" * 64)  # writers go on
    reader.execute("COMMIT")
    assert checkpoint(queue.engine) is True and (tmp_path / "data" / "nsfw.db-wal").stat().st_size == 0
    reader.close()
    queue.engine.dispose()


@pytest.mark.parametrize("others_have_it", [False, True])
def test_what_a_key_is_answered_never_depends_on_what_others_have_pending(store_url: str, others_have_it: bool) -> None:
    """Found by the second review of issue 22: joining another key's item cost no room, so a key one
    below its cap could tell, by its next answer, whether another key had the bytes pending. A join
    costs the room a new item would, ref or no ref."""
    upgrade(store_url)
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=False, max_pending_per_key=2)
    if others_have_it:
        queue.enqueue(_candidate("e" * 64, key="bob"), lambda: {0: _TINY})
    queue.enqueue(_candidate("f" * 64, ref=None), lambda: {0: _TINY})
    queue.enqueue(_candidate("e" * 64, ref=None), lambda: {0: _TINY})  # made, or joined: the same to it
    with pytest.raises(ReviewQueueFull):
        queue.enqueue(_candidate("1" * 64, ref=None), lambda: {0: _TINY})
    item = [i for i in queue.page("pending", 10, None)[0] if i["sha256"] == "e" * 64][0]
    assert item["refs"] == ([{"ref": "ref", "key": "bob"}] if others_have_it else [])  # the join is not shown
    queue.engine.dispose()


def test_postgresql_serving_timeouts_keep_the_urls_own_options(postgres_server: PostgresServer) -> None:
    """Serving connections get a statement and an idle-transaction timeout per transaction (SET LOCAL),
    leaving a URL's own `options` alone (found by the second review of issue 22: the startup options
    replaced them, and poolers refuse them)."""
    url = postgres_server.database("timeouts") + "?options=-c%20search_path%3Dpublic,pg_catalog"
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            shown = [connection.execute(text(f"SHOW {name}")).scalar() for name in ("search_path", "statement_timeout")]
            assert shown == ["public,pg_catalog", "15s"]
            assert connection.execute(text("SHOW idle_in_transaction_session_timeout")).scalar() == "1min"
    finally:
        engine.dispose()
    migrating = make_engine(url, serving=False)
    try:
        with migrating.connect() as connection:
            assert connection.execute(text("SHOW statement_timeout")).scalar() == "0"
    finally:
        migrating.dispose()


def test_the_store_gate_bounds_waits_starts_nothing_late_and_stops_asking_a_hung_store() -> None:
    """The prediction path's bound on the store (nsfw/review StoreGate; found by the reviews of issue
    22): a call waits its timeout at most, a call whose time ran out waiting for a thread is never
    started, and after BREAKER_FAILURES timeouts the store is not asked for a while."""
    from nsfw.errors import ReviewStoreFailed
    from nsfw.review import StoreGate

    gate = StoreGate(timeout=0.2, threads=1)
    hung, started = threading.Event(), []

    def stuck() -> None:
        started.append("stuck")
        hung.wait(10)

    with pytest.raises(ReviewStoreFailed, match="did not answer"):
        gate.run(stuck)
    with pytest.raises(ReviewStoreFailed, match="still waiting"):
        gate.run(lambda: started.append("late"))  # the one thread is stuck: never started
    with pytest.raises(ReviewStoreFailed, match="still waiting"):
        gate.run(lambda: started.append("late"))
    with pytest.raises(ReviewStoreFailed, match="not asked"):
        gate.run(lambda: started.append("late"))  # the breaker: at once
    hung.set()
    assert started == ["stuck"]
    gate.breaker.succeeded()
    assert gate.run(lambda: 42) == 42
    gate.close()


def test_the_oldest_pending_gauge_counts_from_the_undo(store_url: str) -> None:
    upgrade(store_url)
    now = [1_000_000.0]
    queue = ReviewQueue(make_engine(store_url), lease=300, webhooks=False, clock=lambda: now[0])
    review_id = _enqueue(queue, "9" * 64)
    now[0] += 29 * 86400
    queue.decide(review_id, "alice", "safe")
    now[0] += 2 * 86400
    queue.revert(review_id, "bob")
    now[0] += 60
    assert queue.depth() == (1, 60.0)
    queue.engine.dispose()

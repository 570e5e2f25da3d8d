"""The review queue (nsfw/review/), on SQLite and on a real PostgreSQL: migrations, queueing,
remembered decisions, the API and its races, webhooks, retention, and a failing store."""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
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
from nsfw.review import Reviewer
from nsfw.review.queue import ReviewQueue
from nsfw.review.store import make_engine, metadata, outbox, reviews, upgrade
from nsfw.review.webhooks import BACKOFF, Sender
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
    with pytest.raises(ConfigError, match="at revision 0001, not 0003"):
        create_app(_settings(settings, store_url), FakeClassifier())


def test_the_queue_needs_a_key_with_the_review_scope() -> None:
    with pytest.raises(ConfigError, match="NSFW_REVIEW"):
        Settings.from_env({"NSFW_REVIEW": "true"})
    with pytest.raises(ConfigError, match="NSFW_REVIEW"):
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
    assert item["refs"] == ["upload-1"] and item["key"] == "app" and item["kind"] == "unknown"
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
    assert client.get(f"/reviews/{first}", headers=ALICE).get_json()["refs"] == ["a", "b"]


def test_a_decision_is_remembered_as_the_verdict_for_the_same_bytes(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed()
    image = _jpeg((90, 90, 200))
    review_id = _predict(client, image)["review"]["id"]
    decided = client.post(f"/reviews/{review_id}/decision", json={"label": "adult", "note": "nsfw"}, headers=ALICE)
    assert decided.status_code == 200 and decided.get_json()["decided_by"] == "alice"
    answer = _predict(client, image)
    assert answer["verdict"]["label"] == "adult" and answer["tier"] == "human"
    assert answer["verdict"]["reason"].startswith(f"human review {review_id} (alice, ")
    assert answer["review"] == {"id": review_id, "status": "decided"}
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
    assert sorted(item["refs"]) == ["batch", "one", "two"] and item["source_url"] == url


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
    assert queue.prune(30) == 1
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
    return queue.enqueue(candidate, lambda: _jpeg((1, 1, 1)))


def _sender(queue: ReviewQueue, settings: Settings, url: str, clock: Callable[[], float]) -> Sender:
    from nsfw.review import _poster
    from nsfw.service import build_service

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
    import nsfw.service

    source = Path(nsfw.service.__file__).read_text()
    assert "nsfw.review" not in source and "import review" not in source
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
    assert "at revision 0003 (head 0003)" in done.stdout and (tmp_path / "nsfw.db").exists()


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
    from nsfw.review.store import HEAD, alembic_head

    assert alembic_head() == HEAD

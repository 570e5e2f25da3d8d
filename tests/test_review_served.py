"""The review queue from outside: real gunicorn, 2 workers, the default SQLite store, a webhook
receiver on loopback, and a restart in the middle."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from standardwebhooks.webhooks import Webhook

from scripts import hostile_images as bombs
from tests.served import Gunicorn, call
from tests.support import ImageServer, corpus_bytes
from tests.test_review import SECRET, Receiver

APP, MOD = "a" * 43, "m" * 43


def test_queue_decide_hear_restart_remember(
    start_gunicorn: Callable[..., Gunicorn], image_server: ImageServer, tmp_path: Path
) -> None:
    receiver = Receiver(image_server, [])
    env = {
        "NSFW_REVIEW": "true",
        "NSFW_DATA_DIR": str(tmp_path / "data"),
        "NSFW_API_KEYS": f"app:{APP},moderator:{MOD}:review",
        "NSFW_REVIEW_WEBHOOK_URL": receiver.url,
        "NSFW_REVIEW_WEBHOOK_SECRET": SECRET,
        "NSFW_SECRET_KEY": "s" * 40,
    }
    server = start_gunicorn(env)
    flat = image_server.add_file("/flat.jpg", bombs.jpeg_flat(64, 48))
    photo = image_server.add_file("/photo.jpg", corpus_bytes("grace_hopper.jpg"))
    # Thresholds this strict leave the flat image to a human; the photo is safe at the defaults.
    strict = "detail=true&adult_threshold=0.9999&safe_threshold=0.9999&ref=upload-7"
    status, body, _ = call(server, "POST", f"/predict?url={urllib.parse.quote(flat)}&{strict}", APP)
    queued = json.loads(body)
    assert status == 200 and queued["verdict"]["label"] == "unknown" and queued["review"]["status"] == "pending"
    review_id = queued["review"]["id"]
    status, body, _ = call(server, "POST", f"/predict?url={urllib.parse.quote(photo)}&detail=true", APP)
    assert status == 200 and json.loads(body)["verdict"]["label"] == "safe" and "review" not in json.loads(body)

    assert call(server, "GET", "/reviews", APP)[0] == 403  # a predict key is no moderator
    status, body, _ = call(server, "GET", "/reviews", MOD)
    assert status == 200 and [item["id"] for item in json.loads(body)["items"]] == [review_id]
    status, body, _ = call(server, "POST", f"/reviews/{review_id}/decision", MOD, {"label": "adult", "note": "x"})
    assert status == 200

    deadline = time.monotonic() + 15
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(receiver.received) == 1, server.log.read_text()[-3000:]
    headers, raw, _ = receiver.received[0]
    payload = Webhook(SECRET).verify(raw, {name.lower(): value for name, value in headers.items()})
    assert payload["data"]["id"] == review_id and payload["data"]["refs"] == [{"ref": "upload-7", "key": "app"}]
    assert payload["data"]["label"] == "adult" and payload["data"]["moderator"] == "moderator"

    time.sleep(0.3)  # the sender marks the delivery after the receiver's answer
    metrics = call(server, "GET", "/metrics", APP)[1].decode()
    for sample in (
        'nsfw_review_queued_total{kind="unknown"} 1.0',
        'nsfw_review_decisions_total{label="adult"} 1.0',
        'nsfw_webhook_deliveries_total{outcome="delivered"} 1.0',
    ):
        assert sample in metrics, sample

    server.proc.terminate()
    server.proc.wait(30)
    server = start_gunicorn(env)  # the same store: nothing lost
    status, body, _ = call(server, "GET", f"/reviews/{review_id}", MOD)
    item = json.loads(body)
    assert status == 200 and item["label"] == "adult" and item["decided_by"] == "moderator"
    status, body, headers = call(server, "GET", "/reviews/export?format=jsonl", MOD)
    rows = [json.loads(line) for line in body.decode().splitlines()]
    assert status == 200 and [(row["id"], row["label"]) for row in rows] == [(review_id, "adult")]
    status, body, _ = call(server, "POST", f"/predict?url={urllib.parse.quote(flat)}&{strict}", APP)
    again = json.loads(body)
    assert again["tier"] == "human" and again["verdict"]["label"] == "adult"
    assert again["verdict"]["reason"].startswith("human review (20") and "moderator" not in again["verdict"]["reason"]
    time.sleep(1.5)  # a worker's sender pass: the delivered message is never sent again
    assert len(receiver.received) == 1
    assert "nsfw_review_remembered_total 1.0" in call(server, "GET", "/metrics", APP)[1].decode()


def test_moderators_at_once_two_workers_and_a_slow_receiver_hear_each_decision_once(
    start_gunicorn: Callable[..., Gunicorn], image_server: ImageServer, tmp_path: Path
) -> None:
    """Findings 6 and 11 of issue 22 on real gunicorn with 2 workers (fails before it: a receiver that
    answered 200 after NSFW_READ_TIMEOUT had every message marked failed and sent again, and both
    workers' senders could send one message at once). 16 moderators decide 12 items at once; the
    receiver takes 1.5 s to answer each (NSFW_READ_TIMEOUT is 1 s, the delivery timeout 5 s): every
    decision answered 200 is heard exactly once."""
    import threading
    from collections import Counter

    from tests.test_webhooks import SlowReceiver

    receiver = SlowReceiver(image_server, delay=1.5)
    tokens = [chr(98 + n) * 43 for n in range(16)]  # b..q: APP is a..a
    moderators = [f"mod{n}:{token}:review" for n, token in enumerate(tokens)]
    env = {
        "NSFW_REVIEW": "true",
        "NSFW_DATA_DIR": str(tmp_path / "data"),
        "NSFW_API_KEYS": ",".join([f"app:{APP}", *moderators]),
        "NSFW_REVIEW_WEBHOOK_URL": receiver.url,
        "NSFW_REVIEW_WEBHOOK_SECRET": SECRET,
        "NSFW_REVIEW_WEBHOOK_TIMEOUT": "5",
        "NSFW_READ_TIMEOUT": "1",
        "NSFW_SECRET_KEY": "s" * 40,
    }
    server = start_gunicorn(env)
    strict = "detail=true&adult_threshold=0.9999&safe_threshold=0.9999"
    queued = []
    for n in range(12):
        url = image_server.add_file(f"/m{n}.jpg", bombs.jpeg_flat(40 + n, 30))
        status, body, _ = call(server, "POST", f"/predict?url={urllib.parse.quote(url)}&{strict}", APP)
        assert status == 200, body
        queued.append(json.loads(body)["review"]["id"])
    start = threading.Barrier(16)
    answered: Counter[str] = Counter()

    def moderate(n: int) -> None:
        token = tokens[n]
        start.wait()
        for review_id in queued[n % 12 :] + queued[: n % 12]:
            status, _, _ = call(server, "POST", f"/reviews/{review_id}/decision", token, {"label": "adult"})
            if status == 200:
                answered[review_id] += 1

    threads = [threading.Thread(target=moderate, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(answered) == sorted(queued) and set(answered.values()) == {1}
    deadline = time.monotonic() + 60
    while len(receiver.ids) < 12 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # every worker's sender makes passes meanwhile
    assert len(receiver.ids) == 12 and set(receiver.ids.values()) == {1}, receiver.ids
    _, body, _ = call(server, "GET", "/reviews/webhooks?status=delivered", tokens[0])
    deliveries = json.loads(body)["deliveries"]
    assert len(deliveries) == 12 and {d["attempts"] for d in deliveries} == {1}


def _freeze(data: Path, signal_number: int) -> None:
    """SIGSTOP or SIGCONT every process of a PostgreSQL cluster (its postmaster and backends)."""
    import os

    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError):
            continue
    for pid in pids:
        os.kill(pid, signal_number)


def test_a_frozen_postgresql_costs_a_prediction_a_bounded_wait(
    start_gunicorn: Callable[..., Gunicorn], image_server: ImageServer
) -> None:
    """Found by the review of issue 22 (fails before this: with PostgreSQL frozen, detailed predictions
    hung for good, then filled the caller's admission slots, while /health said 200). Each store call
    of the prediction path waits NSFW_REVIEW_STORE_TIMEOUT at most: the answers are 200 with
    review.error, and the queue works again once the store thaws, without a restart."""
    import concurrent.futures
    import signal

    from tests.servers import PostgresServer

    server_pg = PostgresServer()
    try:
        env = {
            "NSFW_REVIEW": "true",
            "NSFW_DATABASE_URL": server_pg.database("frozen"),
            "NSFW_API_KEYS": f"app:{APP},moderator:{MOD}:review",
            "NSFW_SECRET_KEY": "s" * 40,
            "NSFW_REVIEW_STORE_TIMEOUT": "2",
        }
        server = start_gunicorn(env)
        strict = "detail=true&adult_threshold=0.9999&safe_threshold=0.9999"
        urls = [image_server.add_file(f"/f{n}.jpg", bombs.jpeg_flat(30 + n, 20)) for n in range(8)]
        status, body, _ = call(server, "POST", f"/predict?url={urllib.parse.quote(urls[0])}&{strict}", APP)
        assert status == 200 and json.loads(body)["review"]["status"] == "pending"
        _freeze(server_pg.folder / "data", signal.SIGSTOP)
        try:
            with concurrent.futures.ThreadPoolExecutor(6) as pool:
                answers = list(
                    pool.map(
                        lambda url: call(server, "POST", f"/predict?url={urllib.parse.quote(url)}&{strict}", APP),
                        urls[1:7],
                    )
                )
            assert [status for status, _, _ in answers] == [200] * 6
            assert {json.loads(body)["review"]["error"]["code"] for _, body, _ in answers} == {
                "review_store_unavailable"
            }
            assert call(server, "POST", f"/predict?url={urllib.parse.quote(urls[7])}", APP)[0] == 200
            assert call(server, "GET", "/health", APP)[0] == 200
        finally:
            _freeze(server_pg.folder / "data", signal.SIGCONT)
        deadline = time.monotonic() + 30
        while True:
            status, body, _ = call(server, "POST", f"/predict?url={urllib.parse.quote(urls[7])}&{strict}", APP)
            if status == 200 and json.loads(body)["review"].get("status") == "pending":
                break
            assert time.monotonic() < deadline, body
            time.sleep(0.5)
    finally:
        server_pg.stop()

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
from tests.served import Gunicorn
from tests.support import ImageServer, corpus_bytes
from tests.test_review import SECRET, Receiver

APP, MOD = "a" * 43, "m" * 43


def _call(server: Gunicorn, method: str, path: str, token: str, body: dict | None = None) -> tuple[int, bytes, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{server.base}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=20) as answer:
            return answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


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
    status, body, _ = _call(server, "POST", f"/predict?url={urllib.parse.quote(flat)}&{strict}", APP)
    queued = json.loads(body)
    assert status == 200 and queued["verdict"]["label"] == "unknown" and queued["review"]["status"] == "pending"
    review_id = queued["review"]["id"]
    status, body, _ = _call(server, "POST", f"/predict?url={urllib.parse.quote(photo)}&detail=true", APP)
    assert status == 200 and json.loads(body)["verdict"]["label"] == "safe" and "review" not in json.loads(body)

    assert _call(server, "GET", "/reviews", APP)[0] == 403  # a predict key is no moderator
    status, body, _ = _call(server, "GET", "/reviews", MOD)
    assert status == 200 and [item["id"] for item in json.loads(body)["items"]] == [review_id]
    status, body, _ = _call(server, "POST", f"/reviews/{review_id}/decision", MOD, {"label": "adult", "note": "x"})
    assert status == 200

    deadline = time.monotonic() + 15
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(receiver.received) == 1, server.log.read_text()[-3000:]
    headers, raw, _ = receiver.received[0]
    payload = Webhook(SECRET).verify(raw, {name.lower(): value for name, value in headers.items()})
    assert payload["data"]["id"] == review_id and payload["data"]["refs"] == ["upload-7"]
    assert payload["data"]["label"] == "adult" and payload["data"]["moderator"] == "moderator"

    time.sleep(0.3)  # the sender marks the delivery after the receiver's answer
    metrics = _call(server, "GET", "/metrics", APP)[1].decode()
    for sample in (
        'nsfw_review_queued_total{kind="unknown"} 1.0',
        'nsfw_review_decisions_total{label="adult"} 1.0',
        'nsfw_webhook_deliveries_total{outcome="delivered"} 1.0',
    ):
        assert sample in metrics, sample

    server.proc.terminate()
    server.proc.wait(30)
    server = start_gunicorn(env)  # the same store: nothing lost
    status, body, _ = _call(server, "GET", f"/reviews/{review_id}", MOD)
    item = json.loads(body)
    assert status == 200 and item["label"] == "adult" and item["decided_by"] == "moderator"
    status, body, headers = _call(server, "GET", "/reviews/export?format=jsonl", MOD)
    rows = [json.loads(line) for line in body.decode().splitlines()]
    assert status == 200 and [(row["id"], row["label"]) for row in rows] == [(review_id, "adult")]
    status, body, _ = _call(server, "POST", f"/predict?url={urllib.parse.quote(flat)}&{strict}", APP)
    again = json.loads(body)
    assert again["tier"] == "human" and again["verdict"]["label"] == "adult"
    assert again["verdict"]["reason"].startswith(f"human review {review_id} (moderator, ")
    time.sleep(1.5)  # a worker's sender pass: the delivered message is never sent again
    assert len(receiver.received) == 1
    assert "nsfw_review_remembered_total 1.0" in _call(server, "GET", "/metrics", APP)[1].decode()

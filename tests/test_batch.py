"""POST /predict/batch: every item answered in order, bad ones as their own errors, under one deadline."""

from __future__ import annotations

import base64
import http.server
import io
import threading
import time
from dataclasses import replace

import numpy as np
from flask.testing import FlaskClient
from PIL import Image

from nsfw import create_app
from nsfw.config import Settings
from nsfw.model import Classifier
from scripts import hostile_images
from tests.support import MESSAGES, FakeClassifier, ImageServer, corpus_bytes, send, stream

PHOTOS = ["rocket.jpg", "coffee.png", "grace_hopper.jpg", "v_coffee.gif", "v_rocket_lossy.webp"]


def _err(code: str) -> dict:
    return {"error": {"code": code, "message": MESSAGES[code]}}


def test_two_dozen_mixed_items_come_back_in_order_with_errors_in_place(
    client: FlaskClient, image_server: ImageServer
) -> None:
    urls = [image_server.add_file(f"/{name}", corpus_bytes(name)) for name in PHOTOS]
    image_server.add_file("/page.jpg", b"<html>not an image</html>")
    b64 = base64.b64encode(corpus_bytes(PHOTOS[0])).decode()
    items_and_codes = [
        ({"url": urls[0]}, None),
        ({"url": "http://10.0.0.1/a.jpg"}, "url_not_allowed"),
        ({"image_base64": b64}, None),
        ({"url": image_server.url("/missing.jpg")}, "upstream_error"),
        ({"url": urls[1]}, None),
        ({"url": image_server.url("/page.jpg")}, "invalid_image"),
        ({"url": "ftp://example.com/a.jpg"}, "url_scheme_not_allowed"),
        ({"url": urls[2]}, None),
        ({"image_base64": "%%%"}, "invalid_base64"),
        ({"url": urls[3]}, None),
        ({}, "too_many_images"),
        ({"url": urls[4], "image_base64": b64}, "too_many_images"),
        ("just a string", "too_many_images"),
        ({"url": ""}, "missing_url"),
        ({"url": 7}, "invalid_url"),
        ({"url": "http://169.254.169.254/latest/meta-data/"}, "url_not_allowed"),
        ({"image_base64": base64.b64encode(b"GIF89a garbage").decode()}, "invalid_image"),
        ({"url": urls[4]}, None),
        ({"url": "http://127.0.0.1:22/"}, "url_port_not_allowed"),
        ({"image_base64": base64.b64encode(b"%PDF-1.7").decode()}, "unsupported_image_format"),
        ({"url": urls[0]}, None),
        ({"url": "http://[::ffff:127.0.0.1]/"}, "url_not_allowed"),
        ({"image_base64": ""}, "invalid_image"),
        ({"url": urls[2]}, None),
    ]
    assert len(items_and_codes) == 24
    response = client.post("/predict/batch", json={"items": [item for item, _ in items_and_codes]})
    assert response.status_code == 200
    results = response.get_json()["results"]
    assert len(results) == 24
    singles = {url: client.post("/predict", query_string={"url": url}).get_json() for url in urls}
    singles[b64] = singles[urls[0]]
    for (item, code), result in zip(items_and_codes, results, strict=True):
        if code is None:
            key = item.get("url") or item["image_base64"]  # type: ignore[union-attr]
            assert result == singles[key], item  # the same scores as one request at a time
        else:
            assert result == _err(code), (item, result)


def test_batch_level_errors(fake_client: FlaskClient) -> None:
    too_many = {"items": [{"url": "http://example.com/a.jpg"}] * 33}
    for kwargs, status, code in [
        ({"json": too_many}, 400, "too_many_items"),
        ({"json": {"item": []}}, 400, "bad_request"),
        ({"json": [1]}, 400, "bad_request"),
        ({"data": b"x", "content_type": "text/plain"}, 400, "bad_request"),
    ]:
        response = fake_client.post("/predict/batch", **kwargs)
        assert (response.status_code, response.get_json()) == (status, _err(code)), kwargs
    assert fake_client.post("/predict/batch", json={"items": []}).get_json() == {"results": []}
    assert fake_client.get("/predict/batch").status_code == 405


class _Counting:
    """A route that counts the connections it serves at once, each held `delay` seconds."""

    def __init__(self, body: bytes, delay: float) -> None:
        self.body, self.delay = body, delay
        self.now = self.most = self.served = 0
        self.lock = threading.Lock()

    def __call__(self, req: http.server.BaseHTTPRequestHandler) -> None:
        with self.lock:
            self.now += 1
            self.served += 1
            self.most = max(self.most, self.now)
        done = False
        try:  # the body's first bytes, a pause, the rest
            req.send_response(200)
            req.send_header("Content-Length", str(len(self.body)))
            req.end_headers()
            req.wfile.write(self.body[:100])
            req.wfile.flush()
            time.sleep(self.delay)
            # Counted out before the last bytes go: the client cannot be done with this connection
            # (and open another in its place) before it has them, so a count made after them could
            # see the next connection arrive first (a race the test once lost, counting 3).
            with self.lock:
                self.now -= 1
            done = True
            req.wfile.write(self.body[100:])
            req.wfile.flush()
        finally:
            if not done:
                with self.lock:
                    self.now -= 1


def test_downloads_overlap_and_one_deadline_bounds_the_batch(settings: Settings, image_server: ImageServer) -> None:
    """Eight items on one host that each take 0.4 s to arrive overlap, two at a time (the most one
    request holds to one host). With a 1 s batch deadline, a stalled item ends as upstream_timeout
    and the others still answer."""
    jpeg = corpus_bytes(PHOTOS[0])
    slow = image_server.routes["/slow.jpg"] = _Counting(jpeg, 0.4)
    image_server.routes["/stall.jpg"] = stream({"Content-Length": "100000"}, (b"x" for _ in range(10**6)), delay=0.3)
    client = create_app(replace(settings, batch_concurrency=4), FakeClassifier()).test_client()
    items = [{"url": image_server.url(f"/slow.jpg?item={i}")} for i in range(8)]
    results = client.post("/predict/batch", json={"items": items}).get_json()
    assert [set(r) for r in results["results"]] == [{"drawings", "hentai", "neutral", "porn", "sexy"}] * 8
    assert (slow.served, slow.most) == (8, 2)

    client = create_app(replace(settings, batch_timeout=1.0), FakeClassifier()).test_client()
    items = [{"url": image_server.url("/stall.jpg")}, {"url": image_server.url("/slow.jpg")}]
    started = time.monotonic()
    results = client.post("/predict/batch", json={"items": items}).get_json()["results"]
    assert results[0] == _err("upstream_timeout") and "neutral" in results[1]
    assert time.monotonic() - started < 1.5


def test_a_batch_takes_one_admission_slot(settings: Settings, litert: Classifier, image_server: ImageServer) -> None:
    url = image_server.add_file("/a.jpg", corpus_bytes(PHOTOS[0]))
    client = create_app(replace(settings, max_in_flight=1), litert).test_client()
    results = client.post("/predict/batch", json={"items": [{"url": url}] * 5}).get_json()["results"]
    assert all("neutral" in r for r in results)
    image_server.routes["/e"] = send(500, b"secret")
    assert client.post("/predict/batch", json={"items": [{"url": image_server.url("/e")}]}).get_json() == {
        "results": [_err("upstream_error")]
    }


def test_a_url_named_32_times_is_fetched_and_classified_once(
    settings: Settings, fake: FakeClassifier, image_server: ImageServer
) -> None:
    url = image_server.add_file("/once.jpg", corpus_bytes(PHOTOS[0]))
    client = create_app(settings, fake).test_client()
    results = client.post("/predict/batch", json={"items": [{"url": url}] * 32}).get_json()["results"]
    assert len(results) == 32 and all(r == results[0] for r in results) and "neutral" in results[0]
    assert image_server.hits == ["/once.jpg"] and len(fake.seen) == 1
    # The same URL's error is every such item's too.
    bad = [{"url": image_server.url("/missing.jpg")}] * 3 + [{"url": url}]
    answers = client.post("/predict/batch", json={"items": bad}).get_json()["results"]
    assert answers[:3] == [_err("upstream_error")] * 3 and "neutral" in answers[3]
    assert image_server.hits.count("/missing.jpg") == 1


def test_distinct_urls_on_one_host_hold_two_connections_at_most(settings: Settings, image_server: ImageServer) -> None:
    counting = image_server.routes["/img.jpg"] = _Counting(corpus_bytes(PHOTOS[0]), 0.2)
    app = create_app(replace(settings, batch_concurrency=8, max_in_flight=8, max_downloads=16), FakeClassifier())
    items = [{"url": image_server.url(f"/img.jpg?n={i}")} for i in range(8)]
    results = app.test_client().post("/predict/batch", json={"items": items}).get_json()["results"]
    assert all("neutral" in r for r in results)
    assert counting.served == 8 and counting.most == 2


def test_a_requests_downloads_stop_at_its_budget(settings: Settings, image_server: ImageServer) -> None:
    """Four distinct 60 KB images with 150 KB for the request: two are fetched, two refused, and no
    more than the budget (and one chunk) is ever read."""
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (200, 260, 3), dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=95)
    jpeg = out.getvalue()
    assert 50_000 < len(jpeg) < 75_000
    image_server.add_file("/n.jpg", jpeg)
    limited = replace(settings, max_bytes=100_000, max_request_download_bytes=150_000)
    client = create_app(limited, FakeClassifier()).test_client()
    items = [{"url": image_server.url(f"/n.jpg?n={i}")} for i in range(4)]
    results = client.post("/predict/batch", json={"items": items}).get_json()["results"]
    codes = sorted(r.get("error", {}).get("code", "ok") for r in results)
    assert codes == ["download_budget_exceeded", "download_budget_exceeded", "ok", "ok"]
    # A single request has the whole budget again.
    assert "neutral" in client.post("/predict", query_string={"url": image_server.url("/n.jpg?n=9")}).get_json()


def test_base64_bombs_end_within_the_batch_deadline(settings: Settings, litert: Classifier) -> None:
    """Four repeated-scan JPEGs let through the scan limit would each decode for minutes; the batch
    deadline covers decoding too, so every item answers when it passes."""
    bomb = base64.b64encode(hostile_images.jpeg_repeated_scans(300_000, (1024, 1024))).decode()
    app = create_app(replace(settings, batch_timeout=1.0, max_jpeg_scans=10**6), litert)
    results = app.test_client().post("/predict/batch", json={"items": [{"image_base64": bomb}] * 4}).get_json()
    codes = {r["error"]["code"] for r in results["results"]}
    assert codes <= {"image_too_complex", "deadline_exceeded"} and "image_too_complex" in codes
    # With the default scan limit they are refused before decoding.
    app = create_app(settings, litert)
    results = app.test_client().post("/predict/batch", json={"items": [{"image_base64": bomb}] * 4}).get_json()
    assert results["results"] == [_err("image_too_complex")] * 4

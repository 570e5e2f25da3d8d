"""POST /predict/batch: every item answered in order, bad ones as their own errors, under one deadline."""

from __future__ import annotations

import base64
import time
from dataclasses import replace

from flask.testing import FlaskClient

from nsfw import create_app
from nsfw.config import Settings
from nsfw.model import Classifier
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


def test_downloads_overlap_and_one_deadline_bounds_the_batch(settings: Settings, image_server: ImageServer) -> None:
    """Eight items that each take 0.4 s to arrive, four at a time: about 0.8 s, not 3.2 s. With a 1 s
    batch deadline, a stalled item ends as upstream_timeout and the others still answer."""
    jpeg = corpus_bytes(PHOTOS[0])
    image_server.routes["/slow.jpg"] = stream({"Content-Length": str(len(jpeg))}, [jpeg[:100], jpeg[100:]], delay=0.4)
    image_server.routes["/stall.jpg"] = stream({"Content-Length": "100000"}, (b"x" for _ in range(10**6)), delay=0.3)
    client = create_app(replace(settings, batch_concurrency=4), FakeClassifier()).test_client()
    started = time.monotonic()
    results = client.post("/predict/batch", json={"items": [{"url": image_server.url("/slow.jpg")}] * 8}).get_json()
    assert [set(r) for r in results["results"]] == [{"drawings", "hentai", "neutral", "porn", "sexy"}] * 8
    assert time.monotonic() - started < 2.0

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

"""The HTTP contract: NSFW-FLASK's flat scores, /health, and every row of the error table."""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient

import nsfw
import nsfw.web.app
from nsfw.config import Settings
from tests.reference import Corpus
from tests.support import FakeClassifier, ImageServer, corpus_bytes, send

CLASSES = ["drawings", "hentai", "neutral", "porn", "sexy"]


def _error(response: object) -> dict[str, str]:
    body = response.get_json()  # type: ignore[attr-defined]
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]


def test_predict_returns_the_flat_nsfw_flask_shape(
    client: FlaskClient, image_server: ImageServer, repo_reference: Corpus
) -> None:
    url = image_server.add_file("/hopper.jpg", corpus_bytes("grace_hopper.jpg"))
    response = client.post(f"/predict?url={url}")
    assert response.status_code == 200 and response.mimetype == "application/json"
    scores = response.get_json()
    assert list(scores) == CLASSES
    assert all(isinstance(v, float) for v in scores.values())
    assert abs(sum(scores.values()) - 1) < 1e-5
    expected = repo_reference.images()["grace_hopper.jpg"]
    assert np.abs(np.array(list(scores.values())) - expected["variants"]["main"]["probs_array"]).max() <= 1e-3


def test_url_by_query_json_form_and_get_answer_the_same(fake_client: FlaskClient, image_server: ImageServer) -> None:
    url = image_server.add_file("/a.png", corpus_bytes("coffee.png"), "image/png")
    answers = [
        fake_client.post(f"/predict?url={url}"),
        fake_client.get(f"/predict?url={url}"),
        fake_client.post("/predict", json={"url": url}),
        fake_client.post("/predict", data={"url": url}),
    ]
    assert [r.status_code for r in answers] == [200] * 4
    assert all(r.get_json() == answers[0].get_json() for r in answers)
    assert answers[0].get_json() == pytest.approx(dict(zip(CLASSES, [0.1, 0.2, 0.3, 0.25, 0.15], strict=True)))


def test_resize_can_be_chosen_per_request(
    fake: FakeClassifier, fake_client: FlaskClient, image_server: ImageServer
) -> None:
    url = image_server.add_file("/a.png", corpus_bytes("coffee.png"), "image/png")
    assert fake_client.get(f"/predict?url={url}&resize=gantman").status_code == 200
    assert fake_client.get(f"/predict?url={url}&resize=nsfwjs").status_code == 200
    assert not np.array_equal(fake.seen[0], fake.seen[1])
    assert _error(fake_client.get(f"/predict?url={url}&resize=lanczos"))["code"] == "bad_request"


def test_health_is_ok_once_loaded(client: FlaskClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "model": "mobilenet_v2",
        "version": "nsfwjs-4.4.0",
        "backend": "litert",
        "models": ["mobilenet_v2"],
    }


def test_the_app_is_named_for_the_package(settings: Settings) -> None:
    """Issue 23 moved create_app into nsfw/web/app.py; the app keeps the package's name, so its
    logger is still the `nsfw` logger NSFW_LOG_LEVEL and NSFW_LOG_FORMAT configure."""
    import logging

    app = nsfw.create_app(settings, FakeClassifier())
    assert app.name == "nsfw" and app.logger is logging.getLogger("nsfw")


def test_health_is_503_while_the_model_loads(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow_load(s: Settings) -> dict[str, FakeClassifier]:
        release.wait(5)
        return {"mobilenet_v2": FakeClassifier()}

    monkeypatch.setattr(nsfw.web.app, "load_classifiers", slow_load)
    from dataclasses import replace

    client = nsfw.create_app(replace(settings, load_in_background=True)).test_client()
    assert client.get("/health").status_code == 503
    loading = client.post("/predict?url=http://example.com/a.jpg")
    assert loading.status_code == 503 and _error(loading)["code"] == "unavailable"
    assert loading.headers["Retry-After"]
    release.set()
    for _ in range(100):
        if client.get("/health").status_code == 200:
            break
        time.sleep(0.02)
    assert client.get("/health").status_code == 200


def _error_cases(server: ImageServer) -> list[tuple[str, str, dict, int, str]]:
    server.add_file("/page.jpg", b"<html>not an image</html>", "image/jpeg")
    server.add_file("/doc.tif", corpus_bytes("v_chelsea_cmyk.tif"), "image/tiff")
    server.add_file("/empty.jpg", b"")
    server.routes["/big.jpg"] = send(200, b"x", {"Content-Length": str(50 * 1024 * 1024)})
    server.routes["/500.jpg"] = send(500, b"<h1>upstream secret 10.9.8.7</h1>", {"Content-Type": "text/html"})
    good = server.url("/page.jpg")
    return [
        ("POST", "/predict", {}, 400, "missing_url"),
        ("POST", "/predict?url=", {}, 400, "missing_url"),
        ("POST", "/predict?url=nonsense", {}, 400, "url_scheme_not_allowed"),
        ("POST", "/predict?url=ftp://example.com/a.jpg", {}, 400, "url_scheme_not_allowed"),
        ("POST", "/predict?url=http://u:p@example.com/a.jpg", {}, 400, "invalid_url"),
        ("POST", "/predict?url=http://" + "a" * 2100 + ".com/", {}, 400, "invalid_url"),
        ("POST", f"/predict?url={good}&url={good}", {}, 400, "invalid_url"),
        ("POST", f"/predict?url={good}", {"json": {"url": good}}, 400, "invalid_url"),
        ("POST", "/predict", {"json": {"url": 5}}, 400, "invalid_url"),
        ("POST", "/predict", {"json": [1, 2]}, 400, "bad_request"),
        ("POST", "/predict?url=http://169.254.169.254/latest/meta-data/", {}, 400, "url_not_allowed"),
        ("POST", "/predict?url=http://10.0.0.1/a.jpg", {}, 400, "url_not_allowed"),
        ("POST", "/predict?url=http://127.0.0.1:22/", {}, 400, "url_port_not_allowed"),
        ("POST", f"/predict?url={server.url('/missing.jpg')}", {}, 502, "upstream_error"),
        ("POST", f"/predict?url={server.url('/500.jpg')}", {}, 502, "upstream_error"),
        ("POST", f"/predict?url={server.url('/big.jpg')}", {}, 422, "image_too_large"),
        ("POST", f"/predict?url={server.url('/page.jpg')}", {}, 422, "invalid_image"),
        ("POST", f"/predict?url={server.url('/empty.jpg')}", {}, 422, "invalid_image"),
        ("POST", f"/predict?url={server.url('/doc.tif')}", {}, 422, "unsupported_image_format"),
        (
            "POST",
            "/predict",
            {"data": b"x" * 70_000, "content_type": "application/x-www-form-urlencoded"},
            413,
            "payload_too_large",
        ),
        (
            "POST",
            f"/predict?url={good}",
            {"data": b"abc", "content_type": "application/octet-stream"},
            413,
            "payload_too_large",
        ),
        ("GET", "/nope", {}, 404, "not_found"),
        ("DELETE", "/predict", {}, 405, "method_not_allowed"),
        ("POST", "/health", {}, 405, "method_not_allowed"),
    ]


def test_every_error_is_json_with_the_table_status(fake_client: FlaskClient, image_server: ImageServer) -> None:
    for method, path, kwargs, status, code in _error_cases(image_server):
        response = fake_client.open(path, method=method, **kwargs)
        assert (response.status_code, _error(response)["code"]) == (status, code), path[:80]
        text = response.get_data(as_text=True)
        assert "secret" not in text and "10.9.8.7" not in text and "Traceback" not in text


def test_unexpected_exceptions_are_a_generic_500(settings: Settings, image_server: ImageServer) -> None:
    class Broken(FakeClassifier):
        def predict(self, batch: np.ndarray) -> np.ndarray:
            raise RuntimeError("secret internals at /srv/model")

    client = nsfw.create_app(settings, Broken()).test_client()
    url = image_server.add_file("/a.png", corpus_bytes("coffee.png"), "image/png")
    response = client.post(f"/predict?url={url}")
    assert response.status_code == 500 and _error(response)["code"] == "internal_error"
    assert "secret" not in response.get_data(as_text=True)


def test_slow_upstream_is_504(fake_client: FlaskClient, image_server: ImageServer) -> None:
    def hang(req: object) -> None:
        time.sleep(2.5)

    image_server.routes["/hang.jpg"] = hang
    started = time.monotonic()
    response = fake_client.post(f"/predict?url={image_server.url('/hang.jpg')}")
    assert response.status_code == 504 and _error(response)["code"] == "upstream_timeout"
    assert time.monotonic() - started < 2.5


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_temporary_file_is_left_behind(
    client: FlaskClient, image_server: ImageServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A mix of good and failing requests, bodies big enough to spill to disk, leaves nothing."""
    spill_dir = tmp_path / "tmp"
    spill_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill_dir))
    cwd_before = sorted(os.listdir("."))
    big_jpeg = corpus_bytes("big_astronaut_4096.jpg")  # over the in-memory spool size
    assert len(big_jpeg) > 1024 * 1024
    good = image_server.add_file("/big.jpg", big_jpeg)
    truncated = image_server.add_file("/trunc.jpg", big_jpeg[: len(big_jpeg) // 2])
    urls = [good, truncated, image_server.url("/missing.jpg"), good, "http://10.0.0.1/x.jpg"]
    client.post(f"/predict?url={good}")  # warm the session and pools before counting descriptors
    fds = _open_fds()
    statuses = [client.post(f"/predict?url={url}").status_code for url in urls * 2]
    assert statuses == [200, 422, 502, 200, 400] * 2
    assert list(spill_dir.iterdir()) == []
    assert _open_fds() <= fds
    assert sorted(os.listdir(".")) == cwd_before

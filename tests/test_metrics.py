"""Prometheus metrics (nsfw/metrics.py): what each request adds, by route rule; /metrics and its token.

The counters are the process's (no PROMETHEUS_MULTIPROC_DIR in the tests), so each test reads what
its requests added; tests/test_http_server.py reads them across two real workers.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from nsfw import create_app
from nsfw.config import Settings, parse_api_keys
from nsfw.web.frontend import Front
from tests.support import FakeClassifier, ImageServer, corpus_bytes
from tests.test_frontend import Conversation, _scope

TOKEN = "m" * 40


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_are_counted_by_rule_not_path(fake_client: FlaskClient, image_server: ImageServer) -> None:
    url = image_server.add_file("/a.png", corpus_bytes("coffee.png"), "image/png")
    rule = {"method": "POST", "route": "/models/<name>/predict", "status": "200"}
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    before = _value("nsfw_http_requests_total", **rule), _value("nsfw_http_requests_total", **unmatched)
    fake_client.post("/models/mobilenet_v2/predict", query_string={"url": url})
    fake_client.get("/no/such/path/1")
    fake_client.get("/no/such/path/2")
    after = _value("nsfw_http_requests_total", **rule), _value("nsfw_http_requests_total", **unmatched)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 2)
    assert _value("nsfw_http_request_duration_seconds_count", route="/models/<name>/predict") >= 1


def test_predictions_stages_and_failures(fake_client: FlaskClient, image_server: ImageServer) -> None:
    url = image_server.add_file("/a.png", corpus_bytes("coffee.png"), "image/png")
    image_server.add_file("/page.jpg", b"<html>not an image</html>")
    names = [
        ("nsfw_predictions_total", {"model": "mobilenet_v2", "verdict": "unknown"}),
        ("nsfw_predictions_total", {"model": "mobilenet_v2", "verdict": "none"}),
        ("nsfw_stage_duration_seconds_count", {"stage": "inference", "model": "mobilenet_v2"}),
        ("nsfw_stage_duration_seconds_count", {"stage": "fetch", "model": "-"}),
        ("nsfw_upstream_errors_total", {"code": "upstream_error"}),
        ("nsfw_refused_images_total", {"code": "invalid_image"}),
    ]
    before = [_value(name, **labels) for name, labels in names]
    fake_client.get("/predict", query_string={"url": url, "detail": "true"})  # the fake's scores: unknown
    fake_client.get("/predict", query_string={"url": url})
    fake_client.get("/predict", query_string={"url": image_server.url("/missing.jpg")})
    fake_client.get("/predict", query_string={"url": image_server.url("/page.jpg")})
    added = [_value(name, **labels) - was for (name, labels), was in zip(names, before, strict=True)]
    assert added == [1, 1, 2, 4, 1, 1]


def test_the_model_is_described(fake_client: FlaskClient) -> None:
    text = fake_client.get("/metrics").get_data(as_text=True)
    assert 'nsfw_model_info{name="mobilenet_v2",sha256="' in text and "# TYPE nsfw_in_flight gauge" in text


def test_a_metrics_token_guards_metrics_alone(settings: Settings, image_server: ImageServer) -> None:
    keys = parse_api_keys("app:" + "k" * 40)
    client = create_app(replace(settings, api_keys=keys, metrics_token=TOKEN), FakeClassifier()).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"X-API-Key": "k" * 40}).status_code == 401  # a key is not the token
    response = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and response.content_type.startswith("text/plain; version=0.0.4")
    assert client.get("/models", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 401
    # Without a token, /metrics is asked like any route: open without keys, a key with them.
    keyed = create_app(replace(settings, api_keys=keys), FakeClassifier()).test_client()
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/metrics", headers={"X-API-Key": "k" * 40}).status_code == 200


def test_the_fronts_own_refusals_are_counted(settings: Settings) -> None:
    app = create_app(replace(settings, api_keys=parse_api_keys("app:" + "k" * 40)), FakeClassifier())
    front = Front(app, app.extensions["nsfw"], threads=2)
    labels = {"method": "POST", "route": "/predict", "status": "401"}
    before = _value("nsfw_http_requests_total", **labels)
    try:
        talk = Conversation([{"type": "http.request", "body": b"", "more_body": False}])
        asyncio.run(asyncio.wait_for(front(_scope("/predict"), talk.receive, talk.send), 5))
    finally:
        front.pool.shutdown(wait=True)
    assert talk.status == 401 and _value("nsfw_http_requests_total", **labels) - before == 1


def test_a_malformed_metrics_token_stops_the_boot_without_showing_it() -> None:
    import pytest

    from nsfw.config import ConfigError

    with pytest.raises(ConfigError, match="NSFW_METRICS_TOKEN") as info:
        Settings.from_env({"NSFW_METRICS_TOKEN": "short-secret"})
    assert "short-secret" not in str(info.value)


def test_requests_are_counted_by_key_name_never_by_token(settings: Settings) -> None:
    token = "n" * 40
    keys = parse_api_keys(f"mobile-app:{token}")
    client = create_app(replace(settings, api_keys=keys, rate_limit="2/minute"), FakeClassifier()).test_client()

    def sample(key: str, status: str) -> float:
        return REGISTRY.get_sample_value("nsfw_key_requests_total", {"key": key, "status": status}) or 0

    before = {(k, s): sample(k, s) for k in ("mobile-app", "-") for s in ("200", "429", "401")}
    for _ in range(3):
        client.get("/models", headers={"X-API-Key": token})
    client.get("/models")
    assert sample("mobile-app", "200") - before[("mobile-app", "200")] == 2
    assert sample("mobile-app", "429") - before[("mobile-app", "429")] == 1
    assert sample("-", "401") - before[("-", "401")] == 1
    assert token not in client.get("/metrics", headers={"X-API-Key": token}).get_data(as_text=True)

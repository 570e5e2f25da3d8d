"""Hostile requests on the app: strict JSON, ASCII numbers, the body caps the front shares, the access log."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from nsfw.accesslog import REDACTED, redact_query, redact_target
from nsfw.config import ConfigError, Settings
from nsfw.web import routes
from nsfw.web.frontend import server_error
from tests.support import ImageServer, corpus_bytes


def _code(response: Any) -> str:
    body = response.get_json()
    assert set(body) == {"error"}, body
    return str(body["error"]["code"])


@pytest.mark.parametrize("route", ["/predict", "/predict/batch"])
@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_deeply_nested_json_is_400_not_500(fake_client: FlaskClient, route: str, depth: int) -> None:
    for body in ("[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth):
        response = fake_client.post(route, data=body, content_type="application/json")
        assert response.status_code == 400 and _code(response) == "invalid_json"


@pytest.mark.parametrize(
    "body",
    [
        '{"url": "http://a.example/1.jpg", "url": "http://b.example/2.jpg"}',
        '{"url": "http://a.example/1.jpg", "image_base64": "", "image_base64": "AAAA"}',
        '{"url": NaN}',
        '{"url": "http://a.example/1.jpg", "x": Infinity}',
        '{"url": "http://a.example/1.jpg", "x": -Infinity}',
        '{"url": "http://a.example/1.jpg",}',
        '{"url": "http://a.example/1.jpg"} trailing',
        "",
    ],
)
def test_json_that_parsers_read_differently_is_400(fake_client: FlaskClient, body: str) -> None:
    response = fake_client.post("/predict", data=body.encode(), content_type="application/json")
    assert response.status_code == 400 and _code(response) == "invalid_json"


def test_duplicate_keys_are_refused_inside_batch_items_too(fake_client: FlaskClient) -> None:
    body = '{"items": [{"url": "http://a.example/1.jpg", "url": "http://b.example/2.jpg"}]}'
    response = fake_client.post("/predict/batch", data=body, content_type="application/json")
    assert response.status_code == 400 and _code(response) == "invalid_json"
    twice = '{"items": [], "items": [{"url": "http://a.example/1.jpg"}]}'
    response = fake_client.post("/predict/batch", data=twice, content_type="application/json")
    assert response.status_code == 400 and _code(response) == "invalid_json"


def test_strict_json_still_reads_what_clients_send(fake_client: FlaskClient, image_server: ImageServer) -> None:
    url = image_server.add_file("/a.png", corpus_bytes("coffee.png"), "image/png")
    text = json.dumps({"url": url})
    for data in (text.encode(), json.dumps({"url": url}, indent=2).encode(), text.encode("utf-16")):
        response = fake_client.post("/predict", data=data, content_type="application/json")
        assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize(
    "value",
    ["\u0660.\u0667", "\u06f0.\u06f7", "\uff10.\uff17", "0.7\u0660", "0_7", " 0.7", "nan", "inf", "0x1p-1", "", "+"],
)
def test_thresholds_are_ascii_decimal_numbers(fake_client: FlaskClient, image_server: ImageServer, value: str) -> None:
    url = image_server.add_file("/a.png", corpus_bytes("coffee.png"), "image/png")
    response = fake_client.get("/predict", query_string={"url": url, "detail": "true", "adult_threshold": value})
    assert response.status_code == 400 and _code(response) == "invalid_policy"


def test_ascii_thresholds_still_work(fake_client: FlaskClient, image_server: ImageServer) -> None:
    url = image_server.add_file("/a.png", corpus_bytes("coffee.png"), "image/png")
    for value, number in (("0.8", 0.8), (".8", 0.8), ("8e-1", 0.8), ("+0.8", 0.8), ("1", 1.0), ("1.", 1.0)):
        response = fake_client.get("/predict", query_string={"url": url, "detail": "true", "adult_threshold": value})
        assert response.status_code == 200 and response.get_json()["policy"]["adult_threshold"] == number


@pytest.mark.parametrize("value", ["\u0661\u0660", "\uff11\uff10", "1_0", "10.0"])
def test_settings_numbers_are_ascii_too(value: str) -> None:
    with pytest.raises(ConfigError, match="NSFW_MAX_FRAMES"):
        Settings.from_env({"NSFW_MAX_FRAMES": value})


@pytest.mark.parametrize(
    ("mimetype", "limit"),
    [
        ("image/jpeg", "max_bytes"),
        ("application/json", "max_json_image_bytes"),
        ("application/x-www-form-urlencoded", "max_request_bytes"),
        ("text/plain", "max_request_bytes"),
        ("", "max_request_bytes"),
    ],
)
def test_a_body_one_byte_over_its_cap_is_413(fake_client: FlaskClient, mimetype: str, limit: str) -> None:
    settings = fake_client.application.extensions["nsfw"].settings
    cap = getattr(settings, limit)
    assert routes.body_limit(settings, "/predict", mimetype) == cap
    response = fake_client.post("/predict", data=b"x" * (cap + 1), content_type=mimetype or None)
    assert response.status_code == 413 and _code(response) == "payload_too_large"


def test_query_strings_are_redacted_but_options_kept() -> None:
    query = "url=https%3A%2F%2Fb.example%2Fa.jpg%3FX-Amz-Signature%3Dsecret&detail=true&model=inception_v3&token=s3"
    redacted = redact_query(query)
    assert "secret" not in redacted and "s3" not in redacted and "b.example" not in redacted
    assert redacted == f"url={REDACTED}&detail=true&model=inception_v3&token={REDACTED}"
    assert redact_target("/predict?" + query) == "/predict?" + redacted
    assert redact_target("/health") == "/health"


def test_the_access_log_line_has_no_query_secret() -> None:
    """gunicorn's own formatting, through our logger class, of a request with a signed URL."""
    from types import SimpleNamespace

    from gunicorn.config import Config

    from nsfw.accesslog import Logger

    logger = Logger(Config())
    environ = {
        "REQUEST_METHOD": "POST",
        "RAW_URI": "/predict?url=https://b.example/a.jpg%3FSignature%3Dsecret1",
        "QUERY_STRING": "url=https://b.example/a.jpg%3FSignature%3Dsecret1",
        "PATH_INFO": "/predict",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "203.0.113.9",
        "HTTP_REFERER": "https://app.example/page?session=secret2",
    }
    request = SimpleNamespace(headers=[("AUTHORIZATION", "Bearer secret3"), ("REFERER", environ["HTTP_REFERER"])])
    response = SimpleNamespace(status="200 OK", headers=[], sent=10)
    atoms = logger.atoms(response, request, environ, SimpleNamespace(seconds=0, microseconds=1000))
    line = logger.cfg.access_log_format % atoms + atoms["q"] + atoms["{authorization}i"] + atoms["{referer}i"]
    assert "secret" not in line and "POST /predict?url=REDACTED HTTP/1.1" in line


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "bad_request"), (414, "uri_too_long"), (431, "headers_too_large"), (501, "not_implemented")],
)
def test_the_servers_own_answers_are_ours(status: int, code: str) -> None:
    error = server_error(status)
    assert (error.status, error.code) == (status, code)
    assert server_error(426).status == 426 and server_error(500).code == "internal_error"

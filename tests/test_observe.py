"""Request ids (nsfw/web/observe.py): kept when safe, made otherwise, on every answer and log line."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from dataclasses import replace

import pytest
from flask.testing import FlaskClient

from nsfw import create_app
from nsfw.config import Settings, parse_api_keys
from nsfw.web import observe
from nsfw.web.frontend import Front
from tests.support import FakeClassifier, ImageServer, corpus_bytes
from tests.test_frontend import Conversation, _scope

MADE = re.compile(r"[0-9a-f]{32}")


@pytest.fixture()
def records() -> Iterator[list[logging.LogRecord]]:
    """What the service logs, through the filter its own handler has."""
    caught: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.addFilter(observe.RequestIdFilter())
    handler.emit = caught.append  # type: ignore[method-assign]
    logger = logging.getLogger("nsfw")
    logger.addHandler(handler)
    yield caught
    logger.removeHandler(handler)


@pytest.mark.parametrize("given", ["abc-123", "a" * 128, "req:42/7?x=1", "0"])
def test_a_safe_id_is_echoed(fake_client: FlaskClient, given: str) -> None:
    assert fake_client.get("/models", headers={"X-Request-Id": given}).headers["X-Request-Id"] == given


@pytest.mark.parametrize("given", ["", "a" * 129, "two words", "bad\x01id", "tab\tid", "caf\u00e9", "new\x7fline"])
def test_an_unsafe_id_is_replaced(fake_client: FlaskClient, given: str) -> None:
    answered = fake_client.get("/models", headers={"X-Request-Id": given}).headers["X-Request-Id"]
    assert MADE.fullmatch(answered)


def test_every_answer_has_one_errors_too(fake_client: FlaskClient) -> None:
    for response in (fake_client.get("/models"), fake_client.get("/nowhere"), fake_client.post("/predict")):
        assert MADE.fullmatch(response.headers["X-Request-Id"]), response.status_code
    first, second = fake_client.get("/models"), fake_client.get("/models")
    assert first.headers["X-Request-Id"] != second.headers["X-Request-Id"]


def test_the_requests_log_lines_name_it(
    fake_client: FlaskClient, image_server: ImageServer, records: list[logging.LogRecord]
) -> None:
    fake_client.post("/predict", query_string={"url": "http://10.0.0.1/a.jpg"}, headers={"X-Request-Id": "r-1"})
    url = image_server.add_file("/a.png", corpus_bytes("coffee.png"), "image/png")
    items = [{"url": "http://10.0.0.2/b.jpg"}, {"url": url}, {"image_base64": "%%"}]
    fake_client.post("/predict/batch", json={"items": items}, headers={"X-Request-Id": "r-2"})
    ids = {record.getMessage(): record.request_id for record in records}  # type: ignore[attr-defined]
    assert any(rid == "r-1" and "url_not_allowed" in message for message, rid in ids.items())
    batch_lines = [rid for message, rid in ids.items() if message.startswith("batch item")]
    assert batch_lines and set(batch_lines) == {"r-2"}  # the item threads too
    logging.getLogger("nsfw.test").info("outside any request")
    assert records[-1].request_id == "-"  # type: ignore[attr-defined]


def test_the_fronts_own_answers_carry_it(settings: Settings) -> None:
    app = create_app(replace(settings, api_keys=parse_api_keys("app:" + "t" * 40)), FakeClassifier())
    front = Front(app, app.extensions["nsfw"], threads=2)
    try:
        for path, given, status in (("/predict", b"front-1", 401), ("/health", b"bad id", 200)):
            talk = Conversation([{"type": "http.request", "body": b"", "more_body": False}])
            scope = _scope(path, "POST" if path != "/health" else "GET", [(b"x-request-id", given)])
            asyncio.run(asyncio.wait_for(front(scope, talk.receive, talk.send), 5))
            echoed = talk.headers[b"x-request-id"].decode()
            assert talk.status == status and (echoed == given.decode() if status == 401 else MADE.fullmatch(echoed))
    finally:
        front.pool.shutdown(wait=True)


def test_json_lines_name_the_request_id_and_the_key() -> None:
    import json
    import logging

    from nsfw.web.observe import RequestIdFilter, current, formatter

    record = logging.LogRecord("nsfw.api", logging.INFO, __file__, 1, "refused %s", ("x",), None)
    token = current.set("rid-5")
    try:
        RequestIdFilter().filter(record)
    finally:
        current.reset(token)
    line = json.loads(formatter("json").format(record))
    assert line["message"] == "refused x" and line["request_id"] == "rid-5" and line["key"] == "-"
    assert line["level"] == "INFO" and line["logger"] == "nsfw.api"


def test_a_log_format_other_than_text_or_json_stops_the_boot() -> None:
    import pytest

    from nsfw.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="NSFW_LOG_FORMAT"):
        Settings.from_env({"NSFW_LOG_FORMAT": "xml"})
    assert Settings.from_env({"NSFW_LOG_FORMAT": "JSON"}).log_format == "json"

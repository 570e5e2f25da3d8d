"""The OpenAPI document (nsfw/web/openapi.py): valid, the same routes as the app, every error code, and
true of the live service (schemathesis against a real gunicorn)."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from nsfw import create_app, errors
from nsfw.config import Settings, parse_api_keys
from nsfw.store.migrate import upgrade
from nsfw.web.openapi import document
from tests.served import Gunicorn
from tests.support import FakeClassifier

TOKEN = "t" * 43
_IGNORED_METHODS = {"HEAD", "OPTIONS"}


def _openapi_path(rule: str) -> str:
    """/models/<name>/predict -> /models/{name}/predict (and <path:path> -> {path})."""
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def _app_operations(app: Flask) -> set[tuple[str, str]]:
    return {
        (_openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
        if method not in _IGNORED_METHODS
    }


def _documented_operations() -> set[tuple[str, str]]:
    return {(path, method) for path, item in document()["paths"].items() for method in item}


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(document())
    assert document()["openapi"] == "3.1.0"


@pytest.fixture()
def full_app(settings: Settings, tmp_path: Path) -> Iterator[Flask]:
    """The app with every optional route on (the review queue's)."""
    full = replace(
        settings,
        review=True,
        data_dir=tmp_path,
        api_keys=parse_api_keys(f"mod:{TOKEN}:predict+review"),
        secret_key="s" * 40,
    )
    upgrade(full.database)
    app = create_app(full, FakeClassifier())
    yield app
    app.extensions["nsfw.review"].close()


def test_every_route_is_documented_and_every_documented_route_exists(full_app: Flask) -> None:
    assert _app_operations(full_app) == _documented_operations()


def test_the_comparison_sees_a_missing_route(full_app: Flask) -> None:
    """The route-table test can fail: a route the document lacks shows up in the difference."""
    full_app.add_url_rule("/undocumented", "undocumented", lambda: "", methods=["GET"])
    assert _app_operations(full_app) - _documented_operations() == {("/undocumented", "get")}


def test_every_error_code_is_documented_under_its_status() -> None:
    table = document()["components"]["responses"]
    documented = {
        (int(name.removeprefix("Error")), code)
        for name, response in table.items()
        for code in response["content"]["application/json"]["schema"]["properties"]["error"]["properties"]["code"][
            "enum"
        ]
    }
    assert documented == {(cls.status, cls.code) for cls in errors.every_error()}
    # Every error an operation names is in that table.
    for item in document()["paths"].values():
        for operation in item.values():
            for status, response in operation["responses"].items():
                if "$ref" in response:
                    assert response["$ref"] == f"#/components/responses/Error{status}"


def test_the_document_and_the_ui_are_open_with_keys_set(settings: Settings) -> None:
    keyed = replace(settings, api_keys=parse_api_keys(f"app:{TOKEN}"))
    client = create_app(keyed, FakeClassifier()).test_client()
    assert client.get("/openapi.json").get_json() == json.loads(json.dumps(document()))
    page = client.get("/docs/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert client.get("/docs").status_code == 308  # to /docs/
    assert client.get("/models").status_code == 401


def test_the_ui_loads_nothing_from_elsewhere(settings: Settings) -> None:
    client = create_app(settings, FakeClassifier()).test_client()
    page = client.get("/docs/").get_data(as_text=True)
    sources = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert sources, page
    for source in sources:
        assert source.startswith("/docs/"), source
        with client.get(source) as asset:
            assert asset.status_code == 200, source
    with client.get("/docs/swagger-initializer.js") as initializer:  # the page's script that loads it
        assert "/openapi.json" in initializer.get_data(as_text=True)


class _Scripts(HTMLParser):
    """Every <script>'s attributes and text, and every inline event handler (onload=...)."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.handlers: list[str] = []
        self._open: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handlers += [f"<{tag} {name}>" for name, _ in attrs if name.startswith("on")]
        if tag == "script":
            self._open = dict(attrs)
            self.scripts.append((self._open, ""))

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.scripts[-1] = (self._open, self.scripts[-1][1] + data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._open = None


def _directives(policy: str) -> dict[str, list[str]]:
    return {name: sources for name, *sources in (part.split() for part in policy.split(";") if part.strip())}


def test_the_ui_runs_no_inline_script_under_a_strict_csp(settings: Settings) -> None:
    """/docs shares its origin with the moderator's pages: its page has no inline script (every
    <script> has a src and no text, no on* handler), and every answer under /docs carries a CSP whose
    scripts come from 'self' alone, with framing, sniffing and referrers shut. Fails on
    flask-swagger-ui's own page, which configures Swagger UI in an inline script and sends no CSP."""
    client = create_app(settings, FakeClassifier()).test_client()
    page = client.get("/docs/")
    parsed = _Scripts()
    parsed.feed(page.get_data(as_text=True))
    assert parsed.scripts and not parsed.handlers
    for attrs, text in parsed.scripts:
        assert attrs.get("src") and not text.strip(), (attrs, text)
    initializer = parsed.scripts[-1][0]["src"] or ""
    # The page, its initializer and a file of Swagger UI; the redirect to /docs/ and a 404 too.
    for path in ("/docs/", initializer, "/docs/swagger-ui.css", "/docs", "/docs/x"):
        with client.get(path) as answer:
            policy = _directives(answer.headers.get("Content-Security-Policy", ""))
            assert policy.get("default-src") == ["'none'"], path
            assert policy.get("script-src") == ["'self'"] and policy.get("frame-ancestors") == ["'none'"], path
            assert "'unsafe-inline'" not in policy.get("style-src", []), path
            assert answer.headers["X-Frame-Options"] == "DENY"
            assert answer.headers["Referrer-Policy"] == "same-origin"
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
    with client.get(initializer) as script:
        assert script.mimetype == "text/javascript" and "/openapi.json" in script.get_data(as_text=True)
    # Only the files the page loads: not the package's OAuth redirect page, a page with script of its own.
    assert client.get("/docs/oauth2-redirect.html").status_code == 404


# A few examples per operation: enough to walk every body type and parameter, bounded in time.
EXAMPLES = 25


def test_the_live_service_answers_as_documented(start_gunicorn: Callable[..., Gunicorn], tmp_path: Path) -> None:
    """Real gunicorn, 2 workers, keys on; schemathesis writes the requests from /openapi.json and
    checks each answer: no 5xx, a documented status, content type, headers and body. The app it
    serves can reach nothing off this machine (tests/offline_app.py)."""
    server = start_gunicorn(
        {
            "NSFW_API_KEYS": f"app:{TOKEN}:predict+review+banks",
            "NSFW_ALLOWED_PORTS": "1",
            "NSFW_ALLOWED_NETWORKS": "",
            "NSFW_REVIEW": "true",
            "NSFW_DATA_DIR": str(tmp_path),
            "NSFW_SECRET_KEY": "s" * 40,
        },
        app="tests.offline_app:app",
    )
    with urllib.request.urlopen(f"{server.base}/openapi.json", timeout=10) as answer:
        validate(json.loads(answer.read()))
    schema = schemathesis.openapi.from_url(f"{server.base}/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    failures: list[str] = []
    operations = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations.add((operation.path, operation.method.lower()))

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=checks, timeout=30)

        try:
            run()
        except Exception as exc:  # noqa: BLE001 - every operation's failure is collected and shown
            failures.append(f"{operation.label}: {exc}")
    # Every operation but the document's own (schemathesis leaves out the URL it loaded it from;
    # validated above).
    assert operations == _documented_operations() - {("/openapi.json", "get")}
    assert not failures, "\n\n".join(failures)

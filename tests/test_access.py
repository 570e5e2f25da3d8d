"""API keys and scopes (nsfw/web/access.py): parsed at boot, asked of every route but /health."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace

import pytest
from flask.testing import FlaskClient

from nsfw import create_app
from nsfw.cli import main
from nsfw.config import ApiKey, ConfigError, Settings, parse_api_keys
from nsfw.web import access
from nsfw.web.frontend import Front
from tests.support import FakeClassifier, ImageServer, corpus_bytes
from tests.test_frontend import Conversation, _scope

TOKEN = "t" * 40
REVIEWER = "r" * 43
KEYS = f"app:{TOKEN},moderation:{REVIEWER}:review"


def _code(response: object) -> str:
    return str(response.get_json()["error"]["code"])  # type: ignore[attr-defined]


@pytest.fixture()
def keyed(settings: Settings, image_server: ImageServer) -> FlaskClient:
    image_server.add_file("/a.png", corpus_bytes("coffee.png"), "image/png")
    return create_app(replace(settings, api_keys=parse_api_keys(KEYS)), FakeClassifier()).test_client()


def test_keys_parse_with_scopes() -> None:
    app, moderation = parse_api_keys(KEYS)
    assert (app.name, app.scopes, moderation.scopes) == ("app", {"predict"}, {"review"})
    both = parse_api_keys(f"ops:{TOKEN}:predict+review")[0]
    assert both.scopes == {"predict", "review"} and parse_api_keys(both.entry()) == (both,)
    assert TOKEN not in repr(app) and TOKEN not in repr(Settings(api_keys=(app,)))


@pytest.mark.parametrize(
    "raw",
    [
        "app",  # no token
        f"app:{TOKEN}:predict:extra",
        "app:short",  # under 32 characters
        f"app:{'t' * 31}",
        f"app:{'t' * 39}=",  # not URL-safe
        f"app:{TOKEN}:admin",  # no such scope
        f"app:{TOKEN}:",  # empty scopes
        f"a pp:{TOKEN}",  # a space in the name
        f"app:{TOKEN},app:{REVIEWER}",  # the same name twice
        f"app:{TOKEN},ops:{TOKEN}",  # the same token twice
    ],
)
def test_malformed_keys_stop_the_boot_naming_the_variable_not_the_token(raw: str) -> None:
    with pytest.raises(ConfigError, match="NSFW_API_KEYS") as info:
        Settings.from_env({"NSFW_API_KEYS": raw})
    assert TOKEN not in str(info.value) and "t" * 31 not in str(info.value)


def test_without_keys_the_service_is_open(fake_client: FlaskClient, image_server: ImageServer) -> None:
    url = image_server.add_file("/a.png", corpus_bytes("coffee.png"), "image/png")
    assert fake_client.post("/predict", query_string={"url": url}).status_code == 200


def test_a_key_is_needed_and_either_header_carries_it(keyed: FlaskClient, image_server: ImageServer) -> None:
    query = {"url": image_server.url("/a.png")}
    response = keyed.post("/predict", query_string=query)
    assert response.status_code == 401 and _code(response) == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert keyed.post("/predict", query_string=query, headers={"Authorization": "Bearer wrong" * 5}).status_code == 401
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"Authorization": f"bearer {TOKEN}"}, {"X-API-Key": TOKEN}):
        assert keyed.post("/predict", query_string=query, headers=headers).status_code == 200, headers
    assert keyed.get("/models", headers={"X-API-Key": TOKEN}).status_code == 200


@pytest.mark.parametrize("name", ["token", "api_key", "key", "access_token"])
def test_a_token_in_the_query_string_is_not_accepted(keyed: FlaskClient, image_server: ImageServer, name: str) -> None:
    response = keyed.post("/predict", query_string={"url": image_server.url("/a.png"), name: TOKEN})
    assert response.status_code == 401


def test_a_key_without_the_routes_scope_is_403(keyed: FlaskClient, image_server: ImageServer) -> None:
    response = keyed.post("/predict", query_string={"url": image_server.url("/a.png")}, headers={"X-API-Key": REVIEWER})
    assert response.status_code == 403 and _code(response) == "forbidden"


def test_health_is_open_and_unknown_routes_do_not_show_without_a_key(keyed: FlaskClient) -> None:
    assert keyed.get("/health").status_code == 200
    assert keyed.get("/no-such-route").status_code == 401  # no key: nothing to learn about routes
    assert keyed.get("/no-such-route", headers={"X-API-Key": TOKEN}).status_code == 404


def test_scopes_of_paths() -> None:
    assert access.scope_for("/health") is None
    assert access.scope_for("/predict") == access.scope_for("/models/all/predict") == "predict"
    assert access.scope_for("/reviews/3/claim") == "review"
    # The moderator's pages ask for their session, not a key (nsfw/review/pages.py; tests/test_review_pages.py).
    assert access.scope_for("/review") is access.scope_for("/review/login") is None
    assert access.scope_for("/reviewsx") == "review" and access.scope_for("/reviewer") == "predict"


def test_the_comparison_looks_at_every_key() -> None:
    """Constant time: the same work whichever key matches (every digest is compared)."""
    keys = parse_api_keys(KEYS)
    assert access.authenticate(TOKEN, keys) == keys[0] and access.authenticate(REVIEWER, keys) == keys[1]
    assert access.authenticate(TOKEN[:-1], keys) is None and access.authenticate("", keys) is None


def test_the_front_refuses_a_stranger_before_reading_the_body(settings: Settings) -> None:
    app = create_app(replace(settings, api_keys=parse_api_keys(KEYS)), FakeClassifier())
    front = Front(app, app.extensions["nsfw"], threads=2)
    try:
        headers = [(b"content-type", b"image/jpeg"), (b"content-length", b"5000000")]
        talk = Conversation([{"type": "http.request", "body": b"x" * 1000, "more_body": True}])
        asyncio.run(asyncio.wait_for(front(_scope("/predict", headers=headers), talk.receive, talk.send), 5))
        assert talk.status == 401 and talk.json["error"]["code"] == "unauthorized"
        assert front.admission.in_use == 0
    finally:
        front.pool.shutdown(wait=True)


def test_keys_new_prints_a_fresh_token_and_its_entry() -> None:
    out = io.StringIO()
    assert main(["keys", "new", "mobile-app", "--scopes", "predict+review"], out) == 0
    lines = dict(line.split(": ", 1) for line in out.getvalue().splitlines() if ": " in line)
    token = lines["token"]
    assert len(token) >= 43  # 32 bytes, URL-safe base64
    (key,) = parse_api_keys(lines["NSFW_API_KEYS entry"])
    assert key == ApiKey("mobile-app", token, frozenset({"predict", "review"}))
    other = io.StringIO()
    main(["keys", "new", "mobile-app"], other)
    assert token not in other.getvalue()  # a new one each time
    with pytest.raises(SystemExit):
        main(["keys", "new", "x", "--scopes", "admin"], io.StringIO())


def test_answers_over_https_ask_browsers_to_keep_to_it(settings: Settings) -> None:
    """Finding 10 of issue 22 (fails before it: no Strict-Transport-Security, even over https)."""
    import ipaddress
    from dataclasses import replace

    behind = replace(settings, trusted_proxies=(ipaddress.ip_network("10.0.0.0/8"),))
    client = create_app(behind, FakeClassifier()).test_client()
    assert client.get("/models", base_url="https://localhost").headers["Strict-Transport-Security"] == (
        "max-age=31536000"
    )
    proxied = client.get("/health", headers={"X-Forwarded-Proto": "https"}, environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert proxied.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert "Strict-Transport-Security" not in client.get("/models").headers
    forged = client.get("/models", headers={"X-Forwarded-Proto": "https"}, environ_base={"REMOTE_ADDR": "203.0.113.1"})
    assert "Strict-Transport-Security" not in forged.headers

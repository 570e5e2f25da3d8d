"""The moderator's pages in Flask's test client: sessions, CSRF, sign-in limits, headers, undo and
insights (tests/test_review_pages_browser.py drives them in Chromium)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from nsfw import create_app
from nsfw.review import moderators
from nsfw.review.insights import learn
from nsfw.store.migrate import upgrade
from nsfw.web import routes
from tests.support import REPO, FakeClassifier
from tests.test_review import APP, KEYS, SECRET_KEY, _jpeg

PASSWORD = "correct horse battery"


@pytest.fixture()
def app(settings, tmp_path: Path) -> Iterator[Flask]:  # type: ignore[no-untyped-def]
    reviewed = replace(settings, review=True, data_dir=tmp_path, api_keys=KEYS, secret_key=SECRET_KEY)
    upgrade(reviewed.database)
    made = create_app(reviewed, FakeClassifier())
    moderators.add(made.extensions["nsfw.review"].queue.engine, "alice", PASSWORD)
    yield made
    made.extensions["nsfw.review"].close()


def _queue_one(client: FlaskClient, colour: tuple[int, int, int] = (9, 9, 9)) -> str:
    answer = client.post(
        "/predict?detail=true&ref=u", data=_jpeg(colour), headers={**APP, "Content-Type": "image/jpeg"}
    )
    return str(answer.get_json()["review"]["id"])


def _token(page: str) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def _sign_in(client: FlaskClient, password: str = PASSWORD) -> int:
    page = client.get("/review/login").get_data(as_text=True)
    return client.post(
        "/review/login", data={"username": "alice", "password": password, "csrf_token": _token(page)}
    ).status_code


def test_no_session_no_page_and_no_thumbnail(app: Flask) -> None:
    client = app.test_client()
    review_id = _queue_one(client)
    page = client.get("/review")
    assert page.status_code == 302 and page.headers["Location"].startswith("/review/login?next=/review")
    assert client.get("/review/history").status_code == 302
    assert client.get(f"/reviews/{review_id}/thumbnail").status_code == 401
    assert client.get("/reviews").status_code == 401


def test_a_wrong_password_is_refused_and_the_right_one_signs_in(app: Flask) -> None:
    client = app.test_client()
    assert _sign_in(client, "wrong password!") == 401
    assert client.get("/review").status_code == 302
    assert _sign_in(client) == 302
    cookie = client.get_cookie("nsfw_session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Lax" and not cookie.secure
    page = client.get("/review")
    assert page.status_code == 200 and "Nothing to review" in page.get_data(as_text=True)
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and page.headers["X-Frame-Options"] == "DENY"


def test_the_session_cookie_is_secure_over_https(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/review/login", base_url="https://localhost").get_data(as_text=True)
    client.post(
        "/review/login",
        data={"username": "alice", "password": PASSWORD, "csrf_token": _token(page)},
        base_url="https://localhost",
    )
    assert client.get_cookie("nsfw_session", domain="localhost").secure  # type: ignore[union-attr]


def test_the_queue_page_shows_items_and_the_api_takes_the_session_with_its_token(app: Flask) -> None:
    client = app.test_client()
    review_id = _queue_one(client)
    _sign_in(client)
    page = client.get("/review").get_data(as_text=True)
    assert "data-queue" in page and 'data-decision="adult"' in page and 'data-action="reveal"' in page
    listed = client.get("/reviews?status=pending&escalated=false").get_json()  # what the page's script shows
    assert [item["id"] for item in listed["items"]] == [review_id] and listed["total"] == 1
    token = _token(page)
    assert client.get(f"/reviews/{review_id}/thumbnail").status_code == 200  # the session reads
    missing = client.post(f"/reviews/{review_id}/decision", json={"label": "adult"})
    forged = client.post(f"/reviews/{review_id}/decision", json={"label": "adult"}, headers={"X-CSRFToken": "forged"})
    assert missing.status_code == forged.status_code == 403
    done = client.post(f"/reviews/{review_id}/decision", json={"label": "adult"}, headers={"X-CSRFToken": token})
    assert done.status_code == 200 and done.get_json()["decided_by"] == "alice"


def test_a_form_without_its_token_is_refused(app: Flask) -> None:
    client = app.test_client()
    _sign_in(client)
    assert client.post("/review/settings", data={"blur": "on"}).status_code == 400
    assert client.post("/review/logout").status_code == 400
    assert client.get("/review").status_code == 200  # still signed in


def test_a_removed_moderator_is_signed_out_at_the_next_request(app: Flask) -> None:
    client = app.test_client()
    _sign_in(client)
    assert client.get("/review").status_code == 200
    moderators.remove(app.extensions["nsfw.review"].queue.engine, "alice")
    assert client.get("/review").status_code == 302
    assert client.get("/reviews").status_code == 401


def test_sign_in_attempts_are_limited_per_name(app: Flask) -> None:
    client = app.test_client()
    statuses = [_sign_in(client, f"wrong {n} password") for n in range(11)]
    assert statuses == [401] * 10 + [429]
    assert _sign_in(client) == 429  # the right password waits too


def test_undo_within_ten_minutes_puts_the_item_back(app: Flask) -> None:
    client = app.test_client()
    review_id = _queue_one(client)
    _sign_in(client)
    token = _token(client.get("/review").get_data(as_text=True))
    client.post(f"/reviews/{review_id}/decision", json={"label": "safe"}, headers={"X-CSRFToken": token})
    history = client.get("/review/history").get_data(as_text=True)
    assert f'data-review-id="{review_id}"' in history and 'data-action="undo"' in history
    assert client.post(f"/review/history/{review_id}/undo", data={"csrf_token": token}).status_code == 400  # why?
    assert client.get(f"/reviews/{review_id}").get_json()["status"] == "decided"
    answer = client.post(f"/review/history/{review_id}/undo", data={"csrf_token": token, "reason": "wrong key"})
    assert answer.status_code == 302
    item = client.get(f"/reviews/{review_id}").get_json()
    assert item["status"] == "pending"
    assert item["audit"][-1]["action"] == "reverted" and item["audit"][-1]["detail"]["reason"] == "wrong key"
    assert "because “wrong key”" in client.get(f"/review/items/{review_id}").get_data(as_text=True)


def test_insights_suggest_thresholds_from_the_decisions() -> None:
    def item(adult: float, label: str) -> tuple[str, dict[str, float], str]:
        return ("mobilenet_v2", {"porn": adult, "neutral": 1 - adult}, label)

    decided = [item(0.97, "adult")] * 40 + [item(0.02, "safe")] * 40 + [item(0.6, "safe"), item(0.62, "adult")]
    learned = learn(decided)
    assert learned.count == 82 and sum(learned.adult) == 41 and sum(learned.safe) == 41
    assert learned.suggestion is not None and learned.suggestion.disagreement == 0.0
    assert learned.suggestion.threshold > 0.62  # below it, the 0.6 item would be called adult wrongly
    assert learned.suggestion.automatic == 80 / 82


def test_the_insights_page_has_its_chart(app: Flask) -> None:
    client = app.test_client()
    review_id = _queue_one(client)
    _sign_in(client)
    token = _token(client.get("/review").get_data(as_text=True))
    client.post(f"/reviews/{review_id}/decision", json={"label": "adult"}, headers={"X-CSRFToken": token})
    page = client.get("/review/insights").get_data(as_text=True)
    assert "<svg" in page and "Learned from 1 decided items" in page


def test_moderators_from_the_command_line_on_a_fresh_data_folder(tmp_path: Path) -> None:
    env = {"NSFW_DATA_DIR": str(tmp_path / "fresh"), "PATH": "/usr/bin:/bin"}

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "nsfw", "moderators", *args],
            cwd=REPO,
            env=env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert run("add", "alice", stdin=PASSWORD + "\n").returncode == 0
    assert run("add", "bob", stdin="short\n").returncode == 2
    assert run("list").stdout == "alice moderator\n"
    assert run("remove", "alice").returncode == 0 and run("list").stdout == ""


def test_a_moderator_may_turn_blurring_off(app: Flask) -> None:
    client = app.test_client()
    _sign_in(client)
    page = client.get("/review/settings").get_data(as_text=True)
    assert '<body class="blur-24">' in page and 'name="blur" checked' in page
    client.post("/review/settings", data={"csrf_token": _token(page), "blur_px": "24"})  # the box unticked
    page = client.get("/review/settings").get_data(as_text=True)
    assert '<body class="blur-24 no-blur">' in page and 'name="blur" checked' not in page


def test_sign_in_never_redirects_off_the_pages(app: Flask) -> None:
    for target in ("https://evil.example/", "//evil.example/review", "/review\\\\evil", "/predict"):
        client = app.test_client()
        page = client.get("/review/login").get_data(as_text=True)
        answer = client.post(
            f"/review/login?next={target}",
            data={"username": "alice", "password": PASSWORD, "csrf_token": _token(page)},
        )
        assert answer.headers["Location"] == "/review", target


def test_a_made_up_session_cookie_gets_no_room_for_a_big_body(app: Flask) -> None:
    """The front lets a /reviews request with a session cookie through to the app, which checks the
    session; such bodies are capped at NSFW_MAX_REQUEST_BYTES, as fields are, never an image's size."""
    settings = app.extensions["nsfw"].settings
    assert routes.body_limit(settings, "/reviews/x/decision", "application/json") == settings.max_request_bytes
    assert (
        routes.body_limit(settings, "/review/login", "application/x-www-form-urlencoded") == settings.max_request_bytes
    )
    client = app.test_client()
    client.set_cookie("nsfw_session", "made-up")
    answer = client.post(
        "/reviews/x/decision",
        data=b"{" + b" " * (settings.max_request_bytes + 10) + b"}",
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code in (401, 413)


# Issue 22: sessions that can be ended, sign-ins that cannot lock anyone out or exhaust memory.


def _sign_in_from(client: FlaskClient, address: str, password: str = PASSWORD, name: str = "alice") -> int:
    page = client.get("/review/login", environ_base={"REMOTE_ADDR": address}).get_data(as_text=True)
    return client.post(
        "/review/login",
        data={"username": name, "password": password, "csrf_token": _token(page)},
        environ_base={"REMOTE_ADDR": address},
    ).status_code


def _engine(app: Flask):  # type: ignore[no-untyped-def]
    return app.extensions["nsfw.review"].queue.engine


def test_signing_out_ends_every_session_of_that_moderator(app: Flask) -> None:
    """Finding 5 of issue 22 (fails before it: the cookie held only the name, for 31 days, and signing
    out in one browser left every other session, and any copy of the cookie, valid)."""
    here, there = app.test_client(), app.test_client()
    assert _sign_in(here) == 302 and _sign_in(there) == 302
    stolen = here.get_cookie("nsfw_session").value  # type: ignore[union-attr]
    page = here.get("/review").get_data(as_text=True)
    assert here.post("/review/logout", data={"csrf_token": _token(page)}).status_code == 302
    assert there.get("/review").status_code == 302  # signed out there too
    replayed = app.test_client()
    replayed.set_cookie("nsfw_session", stolen)
    assert replayed.get("/review").status_code == 302 and replayed.get("/reviews").status_code == 401


def test_a_new_password_or_removal_and_return_ends_the_old_sessions(app: Flask) -> None:
    """Finding 5 of issue 22 (fails before it): `moderators add` on an existing name, and remove then
    add again, left the old cookies valid."""
    client = app.test_client()
    assert _sign_in(client) == 302
    moderators.add(_engine(app), "alice", "a brand new password")
    assert client.get("/review").status_code == 302
    assert _sign_in(client, "a brand new password") == 302
    old = client.get_cookie("nsfw_session").value  # type: ignore[union-attr]
    moderators.remove(_engine(app), "alice")
    moderators.add(_engine(app), "alice", "a brand new password")
    returned = app.test_client()
    returned.set_cookie("nsfw_session", old)
    assert returned.get("/review").status_code == 302


def test_a_session_lasts_a_working_day(app: Flask) -> None:
    """Finding 5 of issue 22 (fails before it: a signed cookie held for Flask's 31 days): a session
    signed in more than NSFW_SESSION_HOURS (12) ago no longer holds, even with a valid signature."""
    import time

    client = app.test_client()
    assert _sign_in(client) == 302
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    session = serializer.loads(client.get_cookie("nsfw_session").value)  # type: ignore[union-attr]
    assert app.config["PERMANENT_SESSION_LIFETIME"].total_seconds() == 12 * 3600
    old = app.test_client()
    old.set_cookie("nsfw_session", serializer.dumps(session | {"at": time.time() - 12 * 3600 - 60}))
    assert old.get("/review").status_code == 302
    recent = app.test_client()
    recent.set_cookie("nsfw_session", serializer.dumps(session | {"at": time.time() - 11 * 3600}))
    assert recent.get("/review").status_code == 200


def test_wrong_guesses_from_one_address_do_not_lock_the_moderator_out_elsewhere(app: Flask) -> None:
    """Finding 12 of issue 22 (fails before it: after 10 wrong guesses for alice from one address, her
    right password from two other addresses got 429). Failures count per name and address."""
    attacker = app.test_client()
    assert [_sign_in_from(attacker, "203.0.113.9", f"guess {n} wrong") for n in range(11)] == [401] * 10 + [429]
    assert _sign_in_from(attacker, "203.0.113.9") == 429  # that address waits, even with the right one
    assert _sign_in_from(app.test_client(), "198.51.100.1") == 302
    assert _sign_in_from(app.test_client(), "198.51.100.2") == 302


def test_one_address_trying_many_names_is_limited(app: Flask) -> None:
    client = app.test_client()
    statuses = [_sign_in_from(client, "203.0.113.7", "wrong password!", f"name{n}") for n in range(31)]
    assert statuses == [401] * 30 + [429]


def test_password_checks_at_once_are_bounded_per_worker(app: Flask) -> None:
    """Finding 3 of issue 22 (fails before it: every sign-in, a made-up name too, ran its own 64 MiB
    Argon2 check at once; 30 of them needed 1.9 GB). Past CHECKS_AT_ONCE checks, a fast 503."""
    from nsfw.review.pages import _guard
    from nsfw.review.signin import CHECKS_AT_ONCE

    client = app.test_client()
    with app.test_request_context():
        guard = _guard()
    holds = [guard.checking() for _ in range(CHECKS_AT_ONCE)]
    for hold in holds:
        hold.__enter__()
    try:
        page = client.get("/review/login").get_data(as_text=True)
        busy = client.post(
            "/review/login", data={"username": "mallory", "password": "x" * 12, "csrf_token": _token(page)}
        )
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    finally:
        for hold in holds:
            hold.__exit__(None, None, None)
    assert _sign_in(client) == 302


def test_passwords_are_hashed_for_a_small_box_and_old_hashes_rehashed(app: Flask) -> None:
    """Finding 3 of issue 22 (fails before it: argon2-cffi's default, 64 MiB a check): OWASP's
    m=19 MiB, t=2, p=1, and a hash made with the old default is rehashed at its next sign-in."""
    from argon2 import PasswordHasher
    from sqlalchemy import select, update

    from nsfw.review.tables import moderators as table

    def stored() -> str:
        with _engine(app).connect() as connection:
            return str(connection.execute(select(table.c.password_hash)).scalar_one())

    assert stored().startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    with _engine(app).begin() as connection:
        connection.execute(update(table).values(password_hash=PasswordHasher().hash(PASSWORD)))
    assert "m=65536" in stored()
    assert _sign_in(app.test_client()) == 302
    assert stored().startswith("$argon2id$v=19$m=19456,t=2,p=1$")


@pytest.fixture()
def keyed(settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Apps with the queue on, made by the test with more settings; closed at the end."""
    made: list[Flask] = []

    def make(**more: object) -> Flask:
        reviewed = replace(settings, review=True, data_dir=tmp_path, api_keys=KEYS, secret_key=SECRET_KEY, **more)
        upgrade(reviewed.database)
        app = create_app(reviewed, FakeClassifier())
        if not moderators.names(_engine(app)):
            moderators.add(_engine(app), "alice", PASSWORD)
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["nsfw.review"].close()


def test_sign_in_failures_are_counted_where_the_other_limits_are(keyed, redis_server) -> None:  # type: ignore[no-untyped-def]
    """Finding 8 of issue 22 (fails before it: the sign-in limits ignored NSFW_REDIS_URL and counted in
    each process): two instances sharing Redis count one moderator's failures together."""
    redis_server.client.flushall()
    one, two = keyed(redis_url=redis_server.uri), keyed(redis_url=redis_server.uri)
    statuses = [_sign_in_from(app.test_client(), "203.0.113.5", "wrong password!") for app in (one, two) * 5]
    assert statuses == [401] * 10
    assert _sign_in_from(one.test_client(), "203.0.113.5", "wrong password!") == 429
    assert _sign_in_from(two.test_client(), "203.0.113.5") == 429
    redis_server.client.flushall()


def test_a_silent_or_refusing_counter_store_neither_hangs_nor_fails_a_sign_in(keyed) -> None:  # type: ignore[no-untyped-def]
    """Finding 13 of issue 22 (fails before it: with NSFW_RATE_LIMIT_STORAGE on a silent Redis a
    sign-in hung for more than 31 s, on a refusing one it was a 500). A second a call, no retries, and
    this worker's own counters stand in (NSFW_RATE_LIMIT_ON_ERROR=open), which still limit."""
    import time

    from tests.servers import SilentServer, free_port

    with SilentServer() as silent:
        for uri in (silent.uri, f"redis://127.0.0.1:{free_port()}/0"):
            app = keyed(rate_limit_storage=uri)
            client = app.test_client()
            started = time.monotonic()
            assert _sign_in_from(client, "203.0.113.8", "wrong password!") == 401
            assert time.monotonic() - started < 15  # hung for more than 31 s before
            statuses = [_sign_in_from(client, "203.0.113.8", "wrong password!") for _ in range(10)]
            assert statuses == [401] * 9 + [429]  # counted in this worker meanwhile
            assert _sign_in_from(client, "198.51.100.3") == 302


def test_a_closed_service_refuses_sign_ins_while_its_counter_store_fails(keyed) -> None:  # type: ignore[no-untyped-def]
    from tests.servers import free_port

    app = keyed(rate_limit_storage=f"redis://127.0.0.1:{free_port()}/0", rate_limit_on_error="closed")
    client = app.test_client()
    page = client.get("/review/login").get_data(as_text=True)
    answer = client.post("/review/login", data={"username": "alice", "password": PASSWORD, "csrf_token": _token(page)})
    assert answer.status_code == 503 and "Retry-After" in answer.headers


def test_many_guessing_addresses_cannot_lock_a_moderator_out(app: Flask) -> None:
    """Found by the review of issue 22 (fails before this: 10 addresses guessing 10 times each reached the
    per-name ceiling, and alice's right password from her own address got 429, for as long as they
    kept on). The ceiling holds only against addresses that failed for her name."""
    client = app.test_client()
    for n in range(10):
        assert [_sign_in_from(client, f"203.0.113.{n + 10}", "wrong password!") for _ in range(10)] == [401] * 10
    assert _sign_in_from(client, "203.0.113.10", "wrong password!") == 429  # its own count
    assert _sign_in_from(client, "203.0.113.99", "wrong password!") == 401  # a fresh address: one try...
    assert _sign_in_from(client, "203.0.113.99", "wrong password!") == 429  # ...then the ceiling holds it
    assert _sign_in_from(app.test_client(), "198.51.100.50") == 302  # alice, from her desk


def test_an_ipv6_block_counts_as_one_address(app: Flask) -> None:
    """Found by the review of issue 22: each address of one /64 had its own count."""
    client = app.test_client()
    statuses = [_sign_in_from(client, f"2001:db8::{n + 1:x}", "wrong password!") for n in range(11)]
    assert statuses == [401] * 10 + [429]
    assert _sign_in_from(app.test_client(), "2001:db8:0:1::1") == 302  # another /64


def test_a_failing_store_is_a_page_that_says_so(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the review of issue 22: the pages had no handler for a failing store (a 500)."""
    from sqlalchemy.exc import OperationalError

    client = app.test_client()
    assert _sign_in(client) == 302

    def down(*_: object) -> None:
        raise OperationalError("SELECT", {}, Exception("connection refused"))

    monkeypatch.setattr(moderators, "session_of", down)
    page = client.get("/review")
    assert page.status_code == 503 and page.headers["Retry-After"] == "5"
    assert "not answering" in page.get_data(as_text=True)
    api = client.get("/reviews")
    assert api.status_code == 503 and api.get_json()["error"]["code"] == "review_store_unavailable"


def test_an_ipv4_client_on_a_dual_stack_socket_counts_as_itself() -> None:
    """Found by the second review of issue 22: every ::ffff:a.b.c.d address counted as ::/64, one address."""
    from nsfw.review.signin import _prefix

    assert _prefix("::ffff:198.51.100.7") == "198.51.100.7" != _prefix("::ffff:203.0.113.9")
    assert _prefix("2001:db8::1") == _prefix("2001:db8::ffff") == "2001:db8::/64"
    assert _prefix("198.51.100.7") == "198.51.100.7" and _prefix("unix-socket") == "unix-socket"

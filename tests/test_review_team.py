"""A team's moderation, below the browser: claims released, previews, reason codes and notes in the
webhook, escalation and leads, appeals, search, bulk decisions, the team's numbers and the wellbeing
settings, on SQLite and on PostgreSQL (tests/test_review_pages_browser.py drives the same in
Chromium)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select

from nsfw import create_app
from nsfw.config import ConfigError, Settings
from nsfw.errors import AlreadyDecided, Claimed, LeadOnly, SameModerator
from nsfw.imaging.thumbnail import Picture, pictures
from nsfw.review import moderators, team, wellbeing
from nsfw.review.queue import Candidate, ReviewQueue
from nsfw.review.search import Filters
from nsfw.review.tables import outbox
from nsfw.review.wellbeing import Wellbeing
from nsfw.store.engine import make_engine
from nsfw.store.migrate import upgrade
from tests import test_review
from tests.support import FakeClassifier
from tests.test_review import ALICE, APP, BOB, KEYS, SECRET_KEY, _jpeg, _predict

# test_review's fixtures, used here as there: both stores, and an app's test client on them.
store_url, apps, reviewed = test_review.store_url, test_review.apps, test_review.reviewed

DAY = 86400.0


def _candidate(sha256: str, kind: str = "unknown", ref: str | None = "r", adult: float = 0.6) -> Candidate:
    scores = {"drawings": 0.0, "hentai": 0.0, "neutral": 1 - adult, "porn": adult, "sexy": 0.0}
    return Candidate(
        sha256, kind, ref, "app", "https://host.example/a.jpg?sig=1", "mobilenet_v2", "v", scores, "unknown", "r"
    )


@pytest.fixture()
def clocked(store_url: str) -> Iterator[tuple[ReviewQueue, list[float]]]:
    upgrade(store_url)
    now = [1_800_000_000.0]
    engine = make_engine(store_url)
    queue = ReviewQueue(engine, lease=120, webhooks=True, clock=lambda: now[0], reasons=("nudity", "art"))
    yield queue, now
    engine.dispose()


def _enqueue(queue: ReviewQueue, n: int, **more: object) -> str:
    picture = Picture(b"t", b"p", 10, 10)
    return queue.enqueue(_candidate(f"{n:064x}", **more), lambda: {0: picture}).review_id  # type: ignore[arg-type]


def _payloads(queue: ReviewQueue) -> list[dict]:
    with queue.engine.connect() as connection:
        rows = connection.execute(select(outbox.c.payload).order_by(outbox.c.created)).scalars().all()
    return [json.loads(row) for row in rows]


# Claims.


def test_a_claim_ends_when_its_holder_releases_it_and_only_then(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed()
    review_id = _predict(client, _jpeg((1, 2, 3)))["review"]["id"]
    assert client.post(f"/reviews/{review_id}/claim", headers=ALICE).status_code == 200
    assert client.post(f"/reviews/{review_id}/claim", headers=BOB).status_code == 409
    assert client.post(f"/reviews/{review_id}/release", headers=BOB).get_json()["claimed_by"] == "alice"
    assert client.post(f"/reviews/{review_id}/release", headers=ALICE).get_json()["claimed_by"] is None
    assert client.post(f"/reviews/{review_id}/claim", headers=BOB).status_code == 200
    actions = [entry["action"] for entry in client.get(f"/reviews/{review_id}", headers=ALICE).get_json()["audit"]]
    assert actions == ["claimed", "released", "claimed"]  # a refused claim changes nothing


def test_signing_out_releases_every_claim_of_that_moderator(clocked: tuple[ReviewQueue, list[float]]) -> None:
    queue, now = clocked
    mine, theirs = _enqueue(queue, 1), _enqueue(queue, 2)
    queue.claim(mine, "alice")
    queue.claim(theirs, "bob")
    assert queue.release_all("alice") == 1
    assert queue.get(mine)["claimed_by"] is None and queue.get(theirs)["claimed_by"] == "bob"
    queue.claim(mine, "bob")  # open to the others at once


# Pictures.


def test_a_large_photo_keeps_a_preview_and_a_small_one_only_its_thumbnail(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed()
    big = _predict(client, _jpeg((200, 30, 30), (4000, 3000)))["review"]["id"]
    item = client.get(f"/reviews/{big}", headers=ALICE).get_json()
    assert (item["width"], item["height"]) == (4000, 3000)
    preview = Image.open(io.BytesIO(client.get(f"/reviews/{big}/preview", headers=ALICE).data))
    thumbnail = Image.open(io.BytesIO(client.get(f"/reviews/{big}/thumbnail", headers=ALICE).data))
    assert preview.size == (1280, 960) and thumbnail.size == (256, 192)
    tiny = _predict(client, _jpeg((9, 90, 9), (14, 25)))["review"]["id"]
    answer = client.get(f"/reviews/{tiny}/preview", headers=ALICE)
    assert answer.status_code == 200 and Image.open(io.BytesIO(answer.data)).size == (14, 25)
    assert answer.headers["X-Content-Type-Options"] == "nosniff" and answer.headers["Cache-Control"] == "no-store"


def test_the_preview_is_as_large_as_the_setting_says(settings: Settings) -> None:
    frame = Image.new("RGB", (2000, 16), (1, 2, 3))
    made = pictures(frame, 640)
    assert Image.open(io.BytesIO(made.preview)).size == (640, 5)
    assert Image.open(io.BytesIO(made.thumbnail)).size == (256, 2)
    assert (made.width, made.height) == (2000, 16)
    with pytest.raises(ConfigError, match="NSFW_REVIEW_PREVIEW_PX"):
        Settings.from_env({"NSFW_REVIEW_PREVIEW_PX": "100"})


def test_retention_drops_the_preview_with_the_thumbnail(clocked: tuple[ReviewQueue, list[float]]) -> None:
    queue, now = clocked
    review_id = _enqueue(queue, 3)
    assert queue.preview(review_id) == b"p"
    queue.decide(review_id, "alice", "safe")
    now[0] += 31 * DAY
    assert queue.retain(retention_days=30, pending_days=0, audit_days=365)["thumbnails"] == 1
    assert queue.preview(review_id) is None and queue.thumbnail(review_id) is None


# Reasons and notes.


def test_a_reason_code_and_a_note_go_with_the_decision_to_the_client_app(
    clocked: tuple[ReviewQueue, list[float]],
) -> None:
    queue, now = clocked
    review_id = _enqueue(queue, 4)
    with pytest.raises(Exception, match="reason_code 'violence' is not one of nudity, art"):
        queue.decide(review_id, "alice", "adult", None, "violence")
    item = queue.decide(review_id, "alice", "adult", "  visible genitals  ", "nudity")
    assert item["reason_code"] == "nudity" and item["note"] == "visible genitals"
    (payload,) = _payloads(queue)
    assert payload["type"] == "review.decided"
    assert payload["data"]["reason_code"] == "nudity" and payload["data"]["note"] == "visible genitals"
    assert queue.audit_log(review_id)[-1]["detail"] == {
        "label": "adult",
        "note": "visible genitals",
        "reason_code": "nudity",
    }


def test_the_reason_codes_are_the_operators(settings: Settings) -> None:
    assert Settings.from_env({"NSFW_REVIEW_REASONS": "Nudity, art,art"}).review_reasons == ("nudity", "art")
    assert Settings.from_env({"NSFW_REVIEW_REASONS": ""}).review_reasons == ()
    with pytest.raises(ConfigError, match="NSFW_REVIEW_REASONS"):
        Settings.from_env({"NSFW_REVIEW_REASONS": "no spaces please"})


def test_an_unknown_reason_code_is_the_callers_error(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed()
    review_id = _predict(client, _jpeg((5, 6, 7)))["review"]["id"]
    answer = client.post(f"/reviews/{review_id}/decision", json={"label": "adult", "reason_code": 7}, headers=ALICE)
    assert answer.status_code == 400 and answer.get_json()["error"]["code"] == "invalid_label"
    done = client.post(f"/reviews/{review_id}/decision", json={"label": "adult", "reason_code": "art"}, headers=ALICE)
    assert done.status_code == 200 and done.get_json()["reason_code"] == "art"


# Escalation and leads.


def test_an_escalated_item_leaves_the_queue_for_the_leads(clocked: tuple[ReviewQueue, list[float]]) -> None:
    queue, now = clocked
    review_id, other = _enqueue(queue, 5), _enqueue(queue, 6)
    queue.claim(review_id, "bob")
    item = queue.escalate(review_id, "bob", "is this art?")
    assert item["escalated_by"] == "bob" and item["claimed_by"] is None
    assert [i["id"] for i in queue.page("pending", 50, None, escalated=False)[0]] == [other]
    assert [i["id"] for i in queue.page("pending", 50, None, escalated=True)[0]] == [review_id]
    assert queue.count("pending", escalated=True) == 1
    with pytest.raises(LeadOnly):
        queue.decide(review_id, "bob", "safe", lead=False)
    assert queue.decide(review_id, "carol", "safe", lead=True)["decided_by"] == "carol"
    assert [e["action"] for e in queue.audit_log(review_id)] == ["claimed", "escalated", "decided"]
    assert queue.audit_log(review_id)[1]["detail"] == {"note": "is this art?"}


def test_only_a_lead_undoes_another_moderators_decision(clocked: tuple[ReviewQueue, list[float]]) -> None:
    queue, now = clocked
    review_id = _enqueue(queue, 7)
    queue.decide(review_id, "alice", "adult")
    with pytest.raises(LeadOnly):
        queue.revert(review_id, "bob", "looks fine", lead=False)
    reverted = queue.revert(review_id, "alice", "pressed the wrong key", lead=False)  # her own
    assert reverted["status"] == "pending"
    queue.decide(review_id, "alice", "adult")
    queue.revert(review_id, "carol", "a painting", lead=True)
    assert [e["detail"].get("reason") for e in queue.audit_log(review_id) if e["action"] == "reverted"] == [
        "pressed the wrong key",
        "a painting",
    ]
    assert _payloads(queue)[-1]["data"]["revert_reason"] == "a painting"


# Appeals.


def test_an_appeal_reopens_the_decision_for_another_moderator(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed()
    image = _jpeg((40, 41, 42))
    review_id = _predict(client, image, "detail=true&ref=post-7")["review"]["id"]
    client.post(f"/reviews/{review_id}/decision", json={"label": "adult"}, headers=ALICE)
    assert _predict(client, image)["tier"] == "human"

    body = {"statement": "It is a classical painting.", "ref": "post-7"}
    assert client.post(f"/reviews/{review_id}/appeal", json=body, headers=BOB).status_code == 403  # review scope only
    assert client.post(f"/reviews/{review_id}/appeal", json=body, headers=ALICE).status_code == 404  # not its image
    wrong = client.post(f"/reviews/{review_id}/appeal", json={**body, "ref": "post-8"}, headers=APP)
    assert wrong.status_code == 400 and wrong.get_json()["error"]["code"] == "invalid_appeal"
    empty = client.post(f"/reviews/{review_id}/appeal", json={"statement": "  "}, headers=APP)
    assert empty.status_code == 400 and empty.get_json()["error"]["code"] == "invalid_appeal"

    answer = client.post(f"/reviews/{review_id}/appeal", json=body, headers=APP)
    assert answer.status_code == 200, answer.get_json()
    told = answer.get_json()
    assert told["status"] == "pending" and told["kind"] == "appeal" and "decided_by" not in told["appeal"]
    again = client.post(f"/reviews/{review_id}/appeal", json=body, headers=APP)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "not_decided"
    assert _predict(client, image)["review"]["id"] == review_id  # no verdict from memory while appealed

    same = client.post(f"/reviews/{review_id}/decision", json={"label": "safe"}, headers=ALICE)
    assert same.status_code == 409 and same.get_json()["error"]["code"] == "same_moderator"
    decided = client.post(f"/reviews/{review_id}/decision", json={"label": "safe", "reason_code": "art"}, headers=BOB)
    assert decided.status_code == 200
    item = client.get(f"/reviews/{review_id}", headers=ALICE).get_json()
    assert item["appeal"]["statement"] == "It is a classical painting." and item["appeal"]["decided_by"] == "alice"
    assert [e["action"] for e in item["audit"]][-2:] == ["appealed", "decided"]


def test_the_appeals_outcome_is_its_own_webhook(clocked: tuple[ReviewQueue, list[float]]) -> None:
    queue, now = clocked
    review_id = _enqueue(queue, 8, ref="u1")
    queue.decide(review_id, "alice", "adult")
    queue.appeal(review_id, "app", "a painting", "u1")
    with pytest.raises(SameModerator):
        queue.decide(review_id, "alice", "safe")
    queue.decide(review_id, "bob", "safe", None, "art")
    payload = _payloads(queue)[-1]
    assert payload["type"] == "review.appeal_decided"
    assert payload["data"]["appeal"] == {
        "appealed": payload["data"]["appeal"]["appealed"],
        "ref": "u1",
        "statement": "a painting",
        "label": "adult",
        "decided_by": "alice",
        "upheld": False,
    }
    assert payload["data"]["label"] == "safe" and payload["data"]["reason_code"] == "art"


def test_two_moderators_deciding_one_appeal_at_once_one_wins(clocked: tuple[ReviewQueue, list[float]]) -> None:
    import threading

    queue, now = clocked
    review_id = _enqueue(queue, 9)
    queue.decide(review_id, "alice", "adult")
    queue.appeal(review_id, "app", "mine")
    start = threading.Barrier(8)
    results: list[str] = []

    def decide(name: str) -> None:
        start.wait()
        try:
            queue.decide(review_id, name, "safe")
            results.append("won")
        except (AlreadyDecided, Claimed, SameModerator) as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=decide, args=(name,)) for name in ("alice", *(f"m{n}" for n in range(7)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count("won") == 1 and set(results) <= {"won", "AlreadyDecided", "SameModerator"}
    assert queue.get(review_id)["decided_by"] != "alice"


# Search.


def test_search_pages_through_every_match_and_each_filter_narrows(clocked: tuple[ReviewQueue, list[float]]) -> None:
    queue, now = clocked
    start = now[0]
    ids = []
    for n in range(120):
        now[0] = start + n * 3600  # one an hour: five days
        ids.append(_enqueue(queue, 100 + n, ref=f"post-{n}", adult=n / 200))
    for n in range(0, 120, 3):
        queue.decide(ids[n], "alice" if n % 2 else "bob", "adult" if n % 6 else "safe")

    def found(**args: str) -> list[str]:
        filters, cursor, every = Filters.parse(args), None, []
        while True:
            items, cursor = queue.search(filters.condition(), 50, cursor)
            every += [item["id"] for item in items]
            if cursor is None:
                return every

    assert found() == ids[::-1]  # all 120, newest first, in pages of 50
    assert found(ref="post-7") == [ids[7]]
    assert found(status="decided") == ids[::3][::-1]
    assert found(label="safe") == ids[::6][::-1]
    assert found(moderator="alice") == [ids[n] for n in range(0, 120, 3) if n % 2][::-1]
    day = time.strftime("%Y-%m-%d", time.gmtime(start + 48 * 3600))
    on_that_day = [i for n, i in enumerate(ids) if time.strftime("%Y-%m-%d", time.gmtime(start + n * 3600)) == day]
    assert found(**{"from": day, "to": day}) == on_that_day[::-1]
    assert found(min="0.5", max="0.52") == [ids[n] for n in (100, 101, 102, 103, 104)][::-1]
    for wrong in ({"label": "maybe"}, {"from": "yesterday"}, {"min": "2"}, {"kind": "x"}):
        with pytest.raises(ValueError):
            Filters.parse(wrong)


# The team's numbers.


def test_the_team_page_counts_decisions_waits_and_agreement(clocked: tuple[ReviewQueue, list[float]]) -> None:
    queue, now = clocked
    day0 = now[0]
    first = [_enqueue(queue, 300 + n) for n in range(3)]
    audit = _enqueue(queue, 310, kind="audit")
    now[0] = day0 + 600
    queue.decide(first[0], "alice", "adult")
    queue.decide(first[1], "alice", "safe")
    queue.decide(audit, "bob", "unknown" if False else "safe")  # the model said unknown: no agreement
    now[0] = day0 + DAY
    queue.decide(first[2], "bob", "adult")
    queue.appeal(first[0], "app", "no")
    queue.decide(first[0], "bob", "adult")  # upheld
    counted = team.team(queue.engine, now=now[0])
    today, yesterday = counted.days[0], counted.days[1]
    # alice's decision that bob's appeal upheld is still hers: decisions come from the audit log
    assert counted.per_day == {"alice": {yesterday: 2}, "bob": {yesterday: 1, today: 2}}
    assert counted.appeals.items == 1 and counted.appeals.agreed == 1
    assert counted.audits.items == 1 and counted.audits.agreed == 0
    assert counted.waits["alice"] == (600.0, 600.0)


# Wellbeing.


def test_a_moderator_may_make_the_limits_stricter_never_looser(settings: Settings) -> None:
    team_defaults = Wellbeing.defaults(replace(settings, review_session_reveals=40, review_daily_reveals=0))
    mine = team_defaults.over({"session_reveals": 100, "daily_reveals": 200, "blur_px": 48, "greyscale": True})
    assert (mine.session_reveals, mine.daily_reveals, mine.blur_px, mine.greyscale) == (40, 200, 48, True)
    assert team_defaults.over({"session_reveals": 10, "blur_px": 7, "greyscale": "yes"}).session_reveals == 10
    assert team_defaults.over({"blur_px": 7, "greyscale": "yes"}) == team_defaults  # malformed: ignored
    assert wellbeing.parse_form({"blur_px": "16", "greyscale": "on", "daily_reveals": "50"}) == {
        "blur_px": 16,
        "greyscale": True,
        "hold_to_peek": False,
        "hide_scores": False,
        "daily_reveals": 50,
    }
    for wrong in ({"blur_px": "5"}, {"session_reveals": "-1"}, {"daily_reveals": "many"}):
        with pytest.raises(ValueError):
            wellbeing.parse_form(wrong)


def test_exposure_counts_each_revealed_item_once_per_sign_in_and_per_day(
    clocked: tuple[ReviewQueue, list[float]], settings: Settings
) -> None:
    queue, now = clocked
    limits = Wellbeing.defaults(replace(settings, review_session_reveals=2, review_daily_reveals=3))
    ids = [_enqueue(queue, 400 + n) for n in range(4)]
    signed_in = now[0]
    for review_id in (ids[0], ids[0], ids[1]):
        queue.revealed(review_id, "alice")
    seen = wellbeing.exposure(queue.engine, "alice", signed_in, limits, now=now[0])
    assert (seen.session, seen.day, seen.break_due) == (2, 2, True)
    queue.revealed(ids[2], "bob")
    later = now[0] + 60
    assert wellbeing.exposure(queue.engine, "alice", later, limits, now=later).session == 0  # a new sign-in


def test_roles_from_the_command_line_and_the_store(settings: Settings, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nsfw.db'}"
    upgrade(url)
    engine = make_engine(url)
    try:
        moderators.add(engine, "carol", "correct horse battery")
        assert moderators.session_of(engine, "carol").role == "moderator"  # type: ignore[union-attr]
        assert moderators.set_role(engine, "carol", "lead") and not moderators.set_role(engine, "dave", "lead")
        assert moderators.session_of(engine, "carol").lead  # type: ignore[union-attr]
        with pytest.raises(ValueError):
            moderators.set_role(engine, "carol", "admin")
    finally:
        engine.dispose()


@pytest.fixture()
def page_app(settings: Settings, tmp_path: Path) -> Iterator[Flask]:
    made_settings = replace(settings, review=True, data_dir=tmp_path, api_keys=KEYS, secret_key=SECRET_KEY)
    upgrade(made_settings.database)
    made = create_app(made_settings, FakeClassifier())
    engine = made.extensions["nsfw.review"].queue.engine
    for name in ("alice", "carol"):
        moderators.add(engine, name, "correct horse battery")
    moderators.set_role(engine, "carol", "lead")
    yield made
    made.extensions["nsfw.review"].close()


def _signed_in(app: Flask, name: str) -> tuple[FlaskClient, str]:
    client = app.test_client()
    page = client.get("/review/login").get_data(as_text=True)
    token = _token(page)
    client.post("/review/login", data={"username": name, "password": "correct horse battery", "csrf_token": token})
    return client, _token(client.get("/review").get_data(as_text=True))


def _token(page: str) -> str:
    import re

    return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def _queued(client: FlaskClient, colour: tuple[int, int, int], ref: str = "u") -> str:
    answer = client.post(
        f"/predict?detail=true&ref={ref}", data=_jpeg(colour), headers={**APP, "Content-Type": "image/jpeg"}
    )
    return str(answer.get_json()["review"]["id"])


def test_a_closed_tabs_beacon_and_signing_out_release_the_claim(page_app: Flask) -> None:
    client, token = _signed_in(page_app, "alice")
    first, second = _queued(client, (1, 1, 1)), _queued(client, (2, 2, 2))
    for review_id in (first, second):
        assert client.post(f"/reviews/{review_id}/claim", headers={"X-CSRFToken": token}).status_code == 200
    # navigator.sendBeacon: a multipart form with the token, no header of ours.
    beacon = client.post(f"/reviews/{first}/release", data={"csrf_token": token}, content_type="multipart/form-data")
    assert beacon.status_code == 200 and beacon.get_json()["claimed_by"] is None
    assert client.post(f"/reviews/{first}/release", data={"csrf_token": "forged"}).status_code == 403
    client.post("/review/logout", data={"csrf_token": token})
    other = page_app.test_client()
    assert other.get(f"/reviews/{second}", headers=BOB).get_json()["claimed_by"] is None


def test_the_leads_view_and_undoing_anothers_decision_are_for_leads(page_app: Flask) -> None:
    alice, alice_token = _signed_in(page_app, "alice")
    review_id = _queued(alice, (3, 3, 3))
    alice.post(f"/reviews/{review_id}/escalate", json={"note": "art?"}, headers={"X-CSRFToken": alice_token})
    refused = alice.post(f"/reviews/{review_id}/decision", json={"label": "safe"}, headers={"X-CSRFToken": alice_token})
    assert refused.status_code == 403 and refused.get_json()["error"]["code"] == "lead_only"
    assert alice.get("/review/leads").status_code == 403 and ">Leads<" not in alice.get("/review").get_data(
        as_text=True
    )
    carol, carol_token = _signed_in(page_app, "carol")
    assert carol.get("/review/leads").status_code == 200 and ">Leads<" in carol.get("/review").get_data(as_text=True)
    decided = carol.post(f"/reviews/{review_id}/decision", json={"label": "safe"}, headers={"X-CSRFToken": carol_token})
    assert decided.status_code == 200
    undo = alice.post(f"/review/history/{review_id}/undo", data={"csrf_token": alice_token, "reason": "no"})
    assert undo.status_code == 403 and 'data-action="undo"' not in alice.get("/review/history").get_data(as_text=True)
    assert (
        carol.post(f"/review/history/{review_id}/undo", data={"csrf_token": carol_token, "reason": "again"}).status_code
        == 302
    )


def test_a_bulk_decision_is_audited_item_by_item_and_leaves_what_it_may_not_take(page_app: Flask) -> None:
    client, token = _signed_in(page_app, "alice")
    ids = [_queued(client, (10 * n, 5, 5), ref=f"batch-{n}") for n in range(3)]
    page_app.test_client().post(f"/reviews/{ids[2]}/claim", headers=BOB)  # bob holds the third
    extra = _queued(client, (1, 99, 1), ref="not-looked-at")
    for review_id in ids:  # a decision needs a look, in bulk too (blurring is on)
        client.post(f"/review/items/{review_id}/reveal", headers={"X-CSRFToken": token})
    ids.append(extra)
    page = client.get("/review/search?status=pending").get_data(as_text=True)
    assert all(f'value="{review_id}"' in page for review_id in ids)
    answer = client.post(
        "/review/search/decide",
        data={
            "csrf_token": token,
            "id": ids,
            "label": "adult",
            "reason": "nudity",
            "back": "/review/search?status=pending",
        },
    )
    assert answer.status_code == 302 and answer.headers["Location"].endswith("done=2-1-1-0")
    for review_id in ids[:2]:
        item = client.get(f"/reviews/{review_id}").get_json()
        assert item["label"] == "adult" and item["reason_code"] == "nudity" and item["decided_by"] == "alice"
        assert [e["action"] for e in item["audit"]] == ["revealed", "decided"]
    assert client.get(f"/reviews/{ids[2]}").get_json()["status"] == "pending"
    assert client.get(f"/reviews/{extra}").get_json()["status"] == "pending"  # never revealed
    elsewhere = client.post(
        "/review/search/decide",
        data={"csrf_token": token, "id": ids[2], "label": "safe", "back": "https://evil.example/"},
    )
    assert elsewhere.headers["Location"].startswith("/review/search?done=")


def test_the_search_item_team_and_settings_pages(page_app: Flask) -> None:
    client, token = _signed_in(page_app, "alice")
    review_id = _queued(client, (7, 7, 7), ref="post-42")
    client.post(
        f"/reviews/{review_id}/decision", json={"label": "safe", "note": "a cat"}, headers={"X-CSRFToken": token}
    )
    found = client.get("/review/search?ref=post-42").get_data(as_text=True)
    assert f'href="/review/items/{review_id}"' in found and "post-42 (app)" in found
    assert client.get("/review/search?ref=post-43").get_data(as_text=True).count("data-review-id=") == 0
    assert client.get("/review/search?min=7").status_code == 400
    item = client.get(f"/review/items/{review_id}").get_data(as_text=True)
    assert "alice</strong> decided safe: “a cat”" in item and "Webhook deliveries" in item
    assert client.get("/review/items/rv_none").status_code == 404
    team_page = client.get("/review/team").get_data(as_text=True)
    assert ">alice</th>" in team_page and ">0</strong> waiting" in team_page
    saved = client.post(
        "/review/settings",
        data={"csrf_token": token, "blur": "on", "blur_px": "48", "greyscale": "on", "session_reveals": "5"},
    )
    assert saved.status_code == 302
    page = client.get("/review").get_data(as_text=True)
    assert '<body class="blur-48 greyscale">' in page
    wrong = client.post("/review/settings", data={"csrf_token": token, "blur_px": "5"})
    assert wrong.status_code == 400
    exposure = client.post(f"/review/items/{review_id}/reveal", headers={"X-CSRFToken": token}).get_json()
    assert exposure == {"session": 1, "day": 1, "session_limit": 5, "day_limit": 0, "break_due": False}


# The review's findings (each failed on the code before its fix).


def test_a_key_appeals_a_decision_once_and_within_its_pending_cap(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed(review_max_pending_per_key=1)
    ids = []
    for n in range(3):
        review_id = _predict(client, _jpeg((60 + 40 * n, 10, 10)), f"detail=true&ref=p{n}")["review"]["id"]
        client.post(f"/reviews/{review_id}/decision", json={"label": "adult"}, headers=ALICE)
        ids.append(review_id)
    assert client.post(f"/reviews/{ids[0]}/appeal", json={"statement": "mine"}, headers=APP).status_code == 200
    full = client.post(f"/reviews/{ids[1]}/appeal", json={"statement": "mine too"}, headers=APP)
    assert full.status_code == 429 and full.get_json()["error"]["code"] == "too_many_appeals"
    client.post(f"/reviews/{ids[0]}/decision", json={"label": "adult"}, headers=BOB)
    again = client.post(f"/reviews/{ids[0]}/appeal", json={"statement": "please"}, headers=APP)
    assert again.status_code == 409 and again.get_json()["error"]["code"] == "already_appealed"
    assert client.get("/reviews?status=pending", headers=ALICE).get_json()["total"] == 0


def test_a_cursor_of_any_shape_is_the_callers_error(reviewed: Callable[..., FlaskClient]) -> None:
    import base64

    client = reviewed()
    for raw in ('[1e400, "x"]', "[" + "9" * 400 + ', "x"]', '[NaN, "x"]', "{}"):
        cursor = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        answer = client.get(f"/reviews?cursor={cursor}", headers=ALICE)
        assert answer.status_code == 400, (raw, answer.get_json())


def test_a_nul_in_a_moderators_or_users_words_is_the_callers_error(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed()
    review_id = _predict(client, _jpeg((90, 90, 1)))["review"]["id"]
    bad = "a\x00b"
    for path, body, headers in (
        (f"/reviews/{review_id}/escalate", {"note": bad}, ALICE),
        (f"/reviews/{review_id}/decision", {"label": "adult", "note": bad}, ALICE),
    ):
        assert client.post(path, json=body, headers=headers).status_code == 400, path
    client.post(f"/reviews/{review_id}/decision", json={"label": "adult"}, headers=ALICE)
    assert client.post(f"/reviews/{review_id}/appeal", json={"statement": bad}, headers=APP).status_code == 400
    assert client.post(f"/reviews/{review_id}/revert", json={"reason": bad}, headers=ALICE).status_code == 400


def test_retroaction_leaves_an_item_escalated_while_it_looked(
    clocked: tuple[ReviewQueue, list[float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from nsfw.matching.pdq import FrameHashes
    from nsfw.review import queue as queue_module

    queue, now = clocked
    queue.match = True
    pdq = "f" * 16 + "0" * 16 + "a5" * 16
    frame = FrameHashes(100, (pdq,) * 8, (pdq,) * 3)
    ids = [
        queue.enqueue(
            replace(_candidate(f"{n:064x}"), hashes=(frame,)), lambda: {0: Picture(b"t", b"p", 1, 1)}
        ).review_id
        for n in (500, 501)
    ]
    real = queue_module.nearest_of

    def racing(*args: object, **kwargs: object) -> object:  # a moderator escalates the copy right then
        queue.escalate(ids[1], "dave", "needs a lead")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(queue_module, "nearest_of", racing)
    assert queue.decide(ids[0], "alice", "adult")["near_duplicates"] == []
    copy = queue.get(ids[1])
    assert copy["status"] == "pending" and copy["escalated_by"] == "dave"


def test_an_appealed_item_is_never_decided_with_a_near_duplicate(clocked: tuple[ReviewQueue, list[float]]) -> None:
    from nsfw.matching.pdq import FrameHashes

    queue, now = clocked
    queue.match = True
    pdq = "0f" * 16 + "a5" * 16
    frame = FrameHashes(100, (pdq,) * 8, (pdq,) * 3)
    first, second = (
        queue.enqueue(
            replace(_candidate(f"{n:064x}"), hashes=(frame,)), lambda: {0: Picture(b"t", b"p", 1, 1)}
        ).review_id
        for n in (510, 511)
    )
    # The second is decided (the first with it), the first undone, the second appealed: deciding the
    # first again must not answer the appeal.
    queue.decide(second, "alice", "safe")
    assert queue.get(first)["status"] == "decided"  # taken with it: both pending unknown copies
    queue.revert(first, "alice")
    queue.appeal(second, "app", "not safe at all")
    queue.decide(first, "bob", "adult")
    assert queue.get(second)["status"] == "pending" and queue.get(second)["kind"] == "appeal"


def test_the_team_counts_each_decision_for_who_made_it_even_when_appealed(
    clocked: tuple[ReviewQueue, list[float]],
) -> None:
    queue, now = clocked
    sample = _enqueue(queue, 520, kind="audit")
    now[0] += 60
    queue.decide(sample, "alice", "adult")
    queue.appeal(sample, "app", "no")
    queue.decide(sample, "bob", "safe")  # overturned
    counted = team.team(queue.engine, now=now[0])
    day = counted.days[0]
    assert counted.per_day == {"alice": {day: 1}, "bob": {day: 1}}
    assert counted.appeals.items == 1 and counted.appeals.agreed == 0
    assert counted.audits.items == 1  # an appealed audit sample is still one
    assert queue.get(sample)["kind"] == "appeal"


def test_a_bulk_decision_stops_at_a_failing_store_and_says_how_far_it_got(
    page_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    client, token = _signed_in(page_app, "alice")
    ids = [_queued(client, (n * 50, 20, 20), ref=f"b{n}") for n in range(3)]
    for review_id in ids:
        client.post(f"/review/items/{review_id}/reveal", headers={"X-CSRFToken": token})
    real, calls = ReviewQueue.decide, []

    def flaky(self: ReviewQueue, *args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise OperationalError("UPDATE", {}, Exception("server closed the connection"))
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ReviewQueue, "decide", flaky)
    answer = client.post("/review/search/decide", data={"csrf_token": token, "id": ids, "label": "safe"})
    assert answer.status_code == 302 and answer.headers["Location"].endswith("done=1-0-0-2")
    page = client.get(answer.headers["Location"]).get_data(as_text=True)
    assert "Decided 1" in page and "2 not reached: the review store failed" in page


def test_the_undo_form_answers_every_refusal_as_a_page(page_app: Flask) -> None:
    client, token = _signed_in(page_app, "alice")
    review_id = _queued(client, (70, 70, 70))
    client.post(f"/reviews/{review_id}/decision", json={"label": "safe"}, headers={"X-CSRFToken": token})
    queue: ReviewQueue = page_app.extensions["nsfw.review"].queue
    sha256 = queue.get(review_id)["sha256"]
    queue.enqueue(_candidate(sha256), lambda: {0: Picture(b"t", b"p", 1, 1)})  # the same bytes pending again
    answer = client.post(f"/review/history/{review_id}/undo", data={"csrf_token": token, "reason": "oops"})
    assert answer.status_code == 409 and answer.content_type.startswith("text/html")
    assert "cannot be undone now" in answer.get_data(as_text=True)


# The second review's findings.


def test_two_appeals_at_once_count_against_the_cap_in_turn(
    reviewed: Callable[..., FlaskClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    client = reviewed(review_max_pending_per_key=1)
    ids = []
    for n in range(2):
        review_id = _predict(client, _jpeg((30 + 50 * n, 200, 10)), f"detail=true&ref=c{n}")["review"]["id"]
        client.post(f"/reviews/{review_id}/decision", json={"label": "adult"}, headers=ALICE)
        ids.append(review_id)
    real = ReviewQueue._check_room
    meet = threading.Barrier(2, timeout=2)

    def counted_then_wait(self: ReviewQueue, connection: object, key_name: str) -> None:
        real(self, connection, key_name)
        try:
            meet.wait()  # both past the count at once, unless the first holds the key's lock
        except threading.BrokenBarrierError:
            pass

    monkeypatch.setattr(ReviewQueue, "_check_room", counted_then_wait)
    answers: list[int] = []

    def appeal(review_id: str) -> None:
        answers.append(client.post(f"/reviews/{review_id}/appeal", json={"statement": "x"}, headers=APP).status_code)

    threads = [threading.Thread(target=appeal, args=(review_id,)) for review_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == [200, 429]


def test_an_appeal_no_one_answers_leaves_the_decision_standing(clocked: tuple[ReviewQueue, list[float]]) -> None:
    queue, now = clocked
    review_id = _enqueue(queue, 600, ref="u9")
    queue.decide(review_id, "alice", "adult", None, "nudity")
    sha256 = queue.get(review_id)["sha256"]
    queue.appeal(review_id, "app", "please look again", "u9")
    assert queue.remembered(sha256) is None  # suspended while the appeal waits
    now[0] += 31 * DAY
    assert queue.retain(retention_days=30, pending_days=30, audit_days=365)["expired"] == 1
    item = queue.get(review_id)
    assert (item["status"], item["label"], item["decided_by"]) == ("decided", "adult", "alice")
    assert queue.remembered(sha256) is not None and queue.remembered(sha256).label == "adult"  # type: ignore[union-attr]
    payload = _payloads(queue)[-1]
    assert payload["type"] == "review.appeal_decided"
    assert payload["data"]["appeal"]["expired"] is True and payload["data"]["appeal"]["upheld"] is True
    now[0] += 31 * DAY
    queue.retain(retention_days=30, pending_days=30, audit_days=365)
    assert queue.get(review_id)["label"] == "adult"  # a decided item is kept, only its pictures go


def test_a_nul_in_an_id_or_a_filter_names_nothing(reviewed: Callable[..., FlaskClient]) -> None:
    client = reviewed()
    for method, path, headers in (
        ("GET", "/reviews/a%00b", ALICE),
        ("POST", "/reviews/a%00b/release", ALICE),
        ("POST", "/reviews/a%00b/appeal", APP),
    ):
        answer = client.open(path, method=method, json={"statement": "x"}, headers=headers)
        assert answer.status_code == 404, (path, answer.get_json())
    import base64

    cursor = base64.urlsafe_b64encode(b'[1.0, "a\\u0000b"]').decode().rstrip("=")
    assert client.get(f"/reviews?cursor={cursor}", headers=ALICE).status_code == 400
    with pytest.raises(ValueError):
        Filters.parse({"ref": "a\x00b"})


def test_the_contested_moderator_cannot_escalate_the_appeal(clocked: tuple[ReviewQueue, list[float]]) -> None:
    queue, now = clocked
    review_id = _enqueue(queue, 610)
    queue.decide(review_id, "alice", "adult")
    queue.appeal(review_id, "app", "mine")
    with pytest.raises(SameModerator):
        queue.escalate(review_id, "alice", "this user is a troll")
    assert queue.escalate(review_id, "bob", "needs a lead")["escalated_by"] == "bob"


def test_a_reveal_is_recorded_once_per_moderator_and_item(page_app: Flask) -> None:
    client, token = _signed_in(page_app, "alice")
    review_id = _queued(client, (33, 66, 99))
    for _ in range(5):
        assert client.post(f"/review/items/{review_id}/reveal", headers={"X-CSRFToken": token}).status_code == 200
    actions = [entry["action"] for entry in client.get(f"/reviews/{review_id}").get_json()["audit"]]
    assert actions.count("revealed") == 1
    assert client.get("/review/items/a%00b").status_code == 404
    missing = client.post("/review/history/rv_gone/undo", data={"csrf_token": token, "reason": "x"})
    assert missing.status_code == 404 and missing.content_type.startswith("text/html")


def test_a_note_that_says_match_is_still_a_moderators_decision(clocked: tuple[ReviewQueue, list[float]]) -> None:
    queue, now = clocked
    for n in range(2):
        queue.decide(_enqueue(queue, 620 + n), "alice", "adult", "match")
    counted = team.team(queue.engine, now=now[0])
    assert counted.per_day == {"alice": {counted.days[0]: 2}} and counted.retroactive == 0

"""A team working the moderator's pages all day, in headless Chromium against gunicorn with 2 workers:
two moderators and a lead. One test per part of the page: seeing the image, never blocking each other,
reasons, escalation and appeals, finding things, looking after the people, and the phone. axe-core on
every page at both sizes; screenshots to .cache/screenshots/ (copied to docs/screenshots/)."""

from __future__ import annotations

import io
import json
import re
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests import test_review_pages_browser as pages
from tests.served import Gunicorn, call
from tests.support import ImageServer, corpus_bytes

browsers, served = pages.browsers, pages.served  # the fixtures: Chromium, and gunicorn with the queue on
APP, MODERATION, PASSWORDS, STRICT = pages.APP, pages.MODERATION, pages.PASSWORDS, pages.STRICT
PHONE, DESKTOP = (390, 844), (1280, 900)
_IDS = "return Array.from(document.querySelectorAll('.queue [data-review-id]')).map(e => e.dataset.reviewId)"


def _clear(served: Gunicorn) -> None:
    """The fixture's three flat images, decided out of the way."""
    for item in json.loads(call(served, "GET", "/reviews", MODERATION)[1])["items"]:
        call(served, "POST", f"/reviews/{item['id']}/decision", MODERATION, {"label": "safe"})


def _queue(served: Gunicorn, images: ImageServer, name: str, data: bytes, kind: str = "image/jpeg") -> str:
    url = images.add_file(f"/{name}", data, kind)
    request = urllib.request.Request(
        f"{served.base}/predict?url={urllib.parse.quote(url)}&{STRICT}&ref={name}", method="POST"
    )
    request.add_header("Authorization", f"Bearer {APP}")
    with urllib.request.urlopen(request, timeout=30) as answer:
        found = json.loads(answer.read())
    assert found["review"]["status"] == "pending", found
    return str(found["review"]["id"])


def _encoded(image: Image.Image, fmt: str = "JPEG", **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _photo(seed: int, size: tuple[int, int] = (400, 300)) -> bytes:
    """A picture of its own: random blocks, so that no two are near-duplicates (deciding one would
    decide the others with it)."""
    blocks = np.random.default_rng(seed).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return _encoded(Image.fromarray(blocks).resize(size, Image.Resampling.NEAREST))


def _item(served: Gunicorn, review_id: str) -> dict[str, Any]:
    return dict(json.loads(call(served, "GET", f"/reviews/{review_id}", MODERATION)[1]))


_SERVED: list[Gunicorn] = []


def _revealed(review_id: str, name: str) -> bool:
    """Whether the audit log has `name` revealing the item (the exposure the limits count)."""
    entries = _item(_SERVED[-1], review_id)["audit"]
    return any(entry["action"] == "revealed" and entry["actor"] == name for entry in entries)


def _script(driver: WebDriver, script: str, *args: Any) -> Any:
    return driver.execute_script(script, *args)


def _current(driver: WebDriver) -> str:
    return pages._current(driver)


def _press(driver: WebDriver, keys: str) -> None:
    driver.find_element(By.TAG_NAME, "body").send_keys(keys)


def _no_script_errors(driver: WebDriver) -> None:
    """No script error, no failed page resource (the favicon's 401 was one); the API's 409s for an
    item taken meanwhile are answers the page expects."""
    errors = [
        e
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE" and (e["source"] == "javascript" or "/reviews/" not in e["message"])
    ]
    assert not errors, errors


def test_seeing_the_image_large_tiny_extreme_and_animated(
    served: Gunicorn, browsers: Callable[..., WebDriver], image_server: ImageServer
) -> None:
    _clear(served)
    big = Image.open(io.BytesIO(corpus_bytes("grace_hopper.jpg"))).convert("RGB").resize((4000, 3000))
    ImageDraw.Draw(big).text(
        (200, 2900), "caption: a line of text a moderator must be able to read", fill=(255, 255, 0)
    )
    ids = {
        "big": _queue(served, image_server, "big.jpg", _encoded(big)),
        "dot": _queue(
            served, image_server, "dot.png", _encoded(Image.new("RGB", (1, 1), (200, 0, 0)), "PNG"), "image/png"
        ),
        "strip": _queue(
            served, image_server, "strip.png", _encoded(Image.new("RGB", (2000, 16), (0, 90, 0)), "PNG"), "image/png"
        ),
    }
    frames = [Image.new("RGB", (14, 25), colour) for colour in ((0, 0, 0), (20, 20, 20), (240, 200, 180))]
    gif = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    ids["gif"] = _queue(served, image_server, "decoy.gif", gif, "image/gif")

    alice = browsers(DESKTOP)
    pages._sign_in(alice, served.base, "alice", PASSWORDS["alice"])
    assert _current(alice) == ids["big"]
    item = alice.find_element(By.CSS_SELECTOR, ".item.current")
    assert item.find_element(By.CSS_SELECTOR, '[data-field="reason"]').text.startswith("The model was not sure: adult ")
    assert "127.0.0.1" in item.find_element(By.CSS_SELECTOR, '[data-field="source"] summary').text
    assert "4000 × 3000 px, 1 frame" in item.find_element(By.CSS_SELECTOR, '[data-field="size"]').text
    assert item.get_attribute("aria-label").startswith("Image, 4000 × 3000 from 127.0.0.1")  # its content, not its id
    names = "Array.from(document.querySelectorAll('.item.current .score.adult-class .name')).map(e => e.textContent)"
    adult_rows = _script(alice, "return " + names)
    assert sorted(adult_rows) == ["hentai", "porn", "sexy"]  # the adult classes' bars in the adult colour

    _press(alice, Keys.SPACE + "z")  # revealed, then full size in place
    picture = '.item.current [data-field="thumbnail"]'
    WebDriverWait(alice, 10).until(
        lambda d: _script(
            d,
            f"const i = document.querySelector('{picture}');"
            " return i.src.endsWith('/preview') && i.complete && i.naturalWidth",
        )
    )
    assert _script(alice, f"return document.querySelector('{picture}').naturalWidth") == 1280
    assert (
        alice.find_element(By.CSS_SELECTOR, '.item.current [data-action="zoom"]').get_attribute("aria-pressed")
        == "true"
    )
    pages._shot(alice, "queue-zoomed.png")
    pages._no_serious_violations(alice, "queue, zoomed")
    _press(alice, "z")
    WebDriverWait(alice, 5).until(
        lambda d: _script(d, f"return document.querySelector('{picture}').src.endsWith('/thumbnail')")
    )

    # A 1×1 and a 2000×16 strip: scaled up by a whole factor, pixels crisp.
    for name in ("dot", "strip"):
        _press(alice, "j")
        WebDriverWait(alice, 5).until(lambda d, name=name: _current(d) == ids[name])
        shown = WebDriverWait(alice, 10).until(
            lambda d: _script(
                d,
                f"const i = document.querySelector('{picture}'); return i.classList.contains('pixelated')"
                " && [i.width, i.height, getComputedStyle(i).imageRendering]",
            )
        )
        assert min(shown[0], shown[1]) >= 64 and shown[2] == "pixelated", (name, shown)

    # The animation says so first, and its strip starts with the frame that decided; ← → step through it.
    _press(alice, "j")
    WebDriverWait(alice, 5).until(lambda d: _current(d) == ids["gif"])
    note = alice.find_element(By.CSS_SELECTOR, '.item.current [data-field="animation"]').text
    assert note.startswith("Animation: 3 frames, 3 classified."), note
    strip = _script(
        alice,
        "return Array.from(document.querySelectorAll('.item.current [data-frame]'))"
        ".map(e => [e.dataset.frame, e.className, e.textContent])",
    )
    assert len(strip) == 3 and strip[0][1] == "chosen" and "decided the verdict" in strip[0][2], strip
    _press(alice, Keys.SPACE + Keys.ARROW_RIGHT + Keys.ARROW_RIGHT)
    WebDriverWait(alice, 5).until(
        lambda d: _script(d, f"return document.querySelector('{picture}').src.endsWith('/frames/{strip[1][0]}')")
    )
    assert (
        _script(alice, "return document.querySelector('.item.current [data-frame].selected').dataset.frame")
        == strip[1][0]
    )
    _press(alice, "z")  # full size keeps the frame stepped to (the deciding frame's preview is another)
    WebDriverWait(alice, 5).until(
        lambda d: _script(d, f"return document.querySelector('{picture}').src.endsWith('/frames/{strip[1][0]}')")
    )
    pages._status(alice, "This frame at its own size")
    _press(alice, "z")
    pages._shot(alice, "animation-strip.png")
    _no_script_errors(alice)


def test_two_moderators_never_block_each_other(
    served: Gunicorn, browsers: Callable[..., WebDriver], image_server: ImageServer
) -> None:
    _clear(served)
    first, second = (_queue(served, image_server, f"n{n}.jpg", _photo(n)) for n in range(2))
    alice, bob = browsers(DESKTOP), browsers(DESKTOP)
    pages._sign_in(alice, served.base, "alice", PASSWORDS["alice"])
    pages._sign_in(bob, served.base, "bob", PASSWORDS["bob"])
    assert _current(alice) == _current(bob) == first
    _press(alice, "jkj")  # browsing claims nothing
    assert _item(served, first)["claimed_by"] is None and _item(served, second)["claimed_by"] is None
    _press(alice, "k" + Keys.SPACE)  # acting does
    WebDriverWait(alice, 5).until(lambda d: _item(served, first)["claimed_by"] == "alice")
    WebDriverWait(bob, 15).until(lambda d: "Claimed by alice" in d.find_element(By.CSS_SELECTOR, ".item.current").text)

    _press(alice, "n")  # skip: released, and left to the others
    pages._status(alice, "Skipped")
    WebDriverWait(alice, 5).until(lambda d: _item(served, first)["claimed_by"] is None)
    assert _script(alice, _IDS) == [second, first] and _current(alice) == second
    WebDriverWait(bob, 15).until(lambda d: "Claimed by" not in d.find_element(By.CSS_SELECTOR, ".item.current").text)

    _press(alice, Keys.SPACE)  # alice acts on the second, then closes the tab: the beacon releases it
    WebDriverWait(alice, 5).until(lambda d: _item(served, second)["claimed_by"] == "alice")
    alice.get("about:blank")
    WebDriverWait(bob, 10).until(lambda d: _item(served, second)["claimed_by"] is None)

    # A new item arrives without a key press, and the count is the server's.
    assert bob.find_element(By.CSS_SELECTOR, '[data-field="total"]').text == "2 waiting"
    third = _queue(served, image_server, "late.jpg", _photo(7))
    WebDriverWait(bob, 15).until(lambda d: third in _script(d, _IDS))
    WebDriverWait(bob, 5).until(lambda d: d.find_element(By.CSS_SELECTOR, '[data-field="total"]').text == "3 waiting")
    age = bob.find_element(By.CSS_SELECTOR, '.item.current [data-field="age"]').text
    assert re.fullmatch(r"\d+ (s|min) ago", age), age
    _no_script_errors(bob)


def test_reasons_escalation_and_appeals(
    served: Gunicorn, browsers: Callable[..., WebDriver], image_server: ImageServer
) -> None:
    _clear(served)
    painted, unsure = (_queue(served, image_server, f"r{n}.jpg", _photo(10 + n)) for n in range(2))
    alice = browsers(DESKTOP)
    pages._sign_in(alice, served.base, "alice", PASSWORDS["alice"])
    assert _current(alice) == painted
    Select(alice.find_element(By.CSS_SELECTOR, ".item.current select[name=reason]")).select_by_value("art")
    alice.find_element(By.CSS_SELECTOR, ".item.current textarea[name=note]").send_keys("a painting in a museum")
    alice.find_element(By.CSS_SELECTOR, '.item.current [data-action="reveal"]').click()
    alice.find_element(By.CSS_SELECTOR, '.item.current [data-decision="safe"]').click()
    pages._status(alice, "Decided safe")
    decided = _item(served, painted)
    assert (decided["label"], decided["reason_code"], decided["note"]) == ("safe", "art", "a painting in a museum")

    alice.find_element(By.CSS_SELECTOR, ".item.current textarea[name=note]").send_keys("not sure: medical?")
    alice.find_element(By.CSS_SELECTOR, '.item.current [data-action="escalate"]').click()
    pages._status(alice, "Escalated to the leads")
    assert unsure not in _script(alice, _IDS)
    assert not alice.find_elements(By.LINK_TEXT, "Leads")

    carol = browsers(DESKTOP)
    pages._sign_in(carol, served.base, "carol", PASSWORDS["carol"])
    carol.find_element(By.LINK_TEXT, "Leads").click()
    assert _current(carol) == unsure
    assert "Escalated by alice" in carol.find_element(By.CSS_SELECTOR, ".item.current").text
    pages._no_serious_violations(carol, "leads")
    _press(carol, Keys.SPACE + "a")
    pages._status(carol, "Decided adult")
    assert _item(served, unsure)["decided_by"] == "carol"

    # The client app's user appeals alice's decision: another moderator must decide it.
    status, body, _ = call(
        served, "POST", f"/reviews/{painted}/appeal", APP, {"statement": "It is my own artwork.", "ref": "r0.jpg"}
    )
    assert status == 200, body
    alice.get(f"{served.base}/review")
    assert _current(alice) == painted
    assert "It is my own artwork." in alice.find_element(By.CSS_SELECTOR, '.item.current [data-field="appeal"]').text
    _press(alice, Keys.SPACE + "a")
    pages._status(alice, "This appeal contests your own decision: another moderator decides it.")
    assert _item(served, painted)["status"] == "pending"
    bob = browsers(DESKTOP)
    pages._sign_in(bob, served.base, "bob", PASSWORDS["bob"])
    WebDriverWait(bob, 10).until(lambda d: _current(d) == painted)
    _press(bob, Keys.SPACE + "s")
    pages._status(bob, "Decided safe")
    assert _item(served, painted)["decided_by"] == "bob"
    for driver in (alice, bob, carol):
        _no_script_errors(driver)


def test_finding_things_and_bulk_decisions(
    served: Gunicorn, browsers: Callable[..., WebDriver], image_server: ImageServer
) -> None:
    _SERVED.append(served)
    ids = [_queue(served, image_server, f"post-{n}.jpg", _photo(20 + n)) for n in range(3)]
    alice = browsers(DESKTOP)
    pages._sign_in(alice, served.base, "alice", PASSWORDS["alice"])
    alice.get(f"{served.base}/review/search?ref=post-1.jpg")
    rows = alice.find_elements(By.CSS_SELECTOR, "tr[data-review-id]")
    assert [row.get_attribute("data-review-id") for row in rows] == [ids[1]]
    assert rows[0].find_element(By.CSS_SELECTOR, "td.thumb img")
    pages._shot(alice, "search.png")
    pages._no_serious_violations(alice, "search")

    alice.get(f"{served.base}/review/search?status=pending")
    for review_id in ids[:2]:  # looked at (a click reveals the thumbnail), then selected
        alice.find_element(By.CSS_SELECTOR, f'tr[data-review-id="{review_id}"] [data-action="reveal-row"]').click()
        alice.find_element(By.CSS_SELECTOR, f'input[name=id][value="{review_id}"]').click()
    alice.find_element(By.CSS_SELECTOR, f'input[name=id][value="{ids[2]}"]').click()  # selected, never looked at
    WebDriverWait(alice, 10).until(lambda d: all(_revealed(review_id, "alice") for review_id in ids[:2]))
    Select(alice.find_element(By.CSS_SELECTOR, ".bulk-actions select[name=reason]")).select_by_value("nudity")
    alice.find_element(By.CSS_SELECTOR, '.bulk-actions button[value="adult"]').click()
    WebDriverWait(alice, 10, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: "Decided 2; 0 left alone" in d.find_element(By.TAG_NAME, "main").text  # the form's answer loads
    )
    assert "1 not decided because you had not revealed them" in alice.find_element(By.TAG_NAME, "main").text
    for review_id in ids[:2]:
        item = _item(served, review_id)
        assert (item["label"], item["reason_code"], item["decided_by"]) == ("adult", "nudity", "alice")
    assert _item(served, ids[2])["status"] == "pending"

    alice.get(f"{served.base}/review/search?ref=post-1.jpg")
    alice.find_element(By.CSS_SELECTOR, "tr[data-review-id] a").click()
    WebDriverWait(alice, 10).until(lambda d: d.current_url.endswith(f"/review/items/{ids[1]}"))
    history = alice.find_element(By.CSS_SELECTOR, ".history-list").text
    assert "alice decided adult (nudity)" in history
    alice.find_element(By.CSS_SELECTOR, '[data-action="reveal"]').click()
    alice.find_element(By.CSS_SELECTOR, '[data-action="zoom"]').click()
    pages._shot(alice, "item.png")
    pages._no_serious_violations(alice, "item")
    _no_script_errors(alice)


def test_looking_after_the_people(
    served: Gunicorn, browsers: Callable[..., WebDriver], image_server: ImageServer
) -> None:
    bob = browsers(DESKTOP)
    pages._sign_in(bob, served.base, "bob", PASSWORDS["bob"])
    bob.get(f"{served.base}/review/settings")
    pages._no_serious_violations(bob, "settings")
    Select(bob.find_element(By.NAME, "blur_px")).select_by_value("48")
    for name in ("greyscale", "hide_scores"):
        bob.find_element(By.NAME, name).click()
    bob.find_element(By.NAME, "session_reveals").send_keys("2")
    bob.find_element(By.CSS_SELECTOR, ".wellbeing button[type=submit]").click()
    WebDriverWait(bob, 10).until(lambda d: "Saved." in d.page_source)
    assert "In force now: 2 per sign-in" in bob.page_source

    bob.get(f"{served.base}/review")
    _current(bob)
    assert pages._filter(bob) == "blur(48px) grayscale(1)"
    scores = bob.find_element(By.CSS_SELECTOR, '.item.current [data-field="scores"]')
    assert (
        not scores.is_displayed()
        or _script(bob, "return getComputedStyle(arguments[0]).visibility", scores) == "hidden"
    )
    _press(bob, Keys.SPACE)
    WebDriverWait(bob, 5).until(lambda d: pages._filter(d) == "none")
    assert _script(bob, "return getComputedStyle(arguments[0]).visibility", scores) == "visible"
    _press(bob, "s")
    WebDriverWait(bob, 10).until(lambda d: _current(d) != "")
    _press(bob, Keys.SPACE)  # the second reveal since signing in: the limit
    WebDriverWait(bob, 10).until(lambda d: d.find_element(By.ID, "break").is_displayed())
    assert "You have revealed 2 items since you signed in" in bob.find_element(By.ID, "break").text
    pages._shot(bob, "break.png")
    bob.find_element(By.CSS_SELECTOR, '#break button[value="continue"]').click()

    bob.get(f"{served.base}/review/team")
    assert re.search(r"bob\s+1", bob.find_element(By.CSS_SELECTOR, "table.team").text)
    pages._shot(bob, "team.png")
    pages._no_serious_violations(bob, "team")
    _no_script_errors(bob)


def test_every_page_fits_a_phone_and_passes_axe_at_both_sizes(
    served: Gunicorn, browsers: Callable[..., WebDriver], image_server: ImageServer
) -> None:
    review_id = json.loads(call(served, "GET", "/reviews", MODERATION)[1])["items"][0]["id"]
    call(served, "POST", f"/reviews/{review_id}/decision", MODERATION, {"label": "adult"})
    for size in (PHONE, DESKTOP):
        carol = browsers(size)
        carol.get(f"{served.base}/review/login")
        pages._no_serious_violations(carol, f"/review/login at {size}")
        pages._sign_in(carol, served.base, "carol", PASSWORDS["carol"])
        for path in (
            "/review",
            "/review/leads",
            "/review/search",
            f"/review/items/{review_id}",
            "/review/history",
            "/review/team",
            "/review/insights",
            "/review/settings",
        ):
            carol.get(served.base + path)
            if path == "/review":
                _current(carol)
                if size == PHONE:
                    pages._shot(carol, "phone-queue.png")
            wide = _script(carol, "return [document.documentElement.scrollWidth, window.innerWidth]")
            assert wide[0] <= wide[1], (path, size, wide)
            pages._no_serious_violations(carol, f"{path} at {size}")
        _no_script_errors(carol)


def test_hold_to_peek_and_a_moderator_without_blur_are_counted(
    served: Gunicorn, browsers: Callable[..., WebDriver], image_server: ImageServer
) -> None:
    """Hold to peek shows the picture only while held (the key, or the button with the pointer, let go
    anywhere), a decision may follow a peek, by key or by mouse; and a moderator who turned blurring off
    is counted for what the page shows them (their exposure limits hold)."""
    from selenium.webdriver.common.action_chains import ActionChains

    _SERVED.append(served)
    _clear(served)
    first, second = (_queue(served, image_server, f"peek{n}.jpg", _photo(40 + n)) for n in range(2))
    alice = browsers(DESKTOP)
    pages._sign_in(alice, served.base, "alice", PASSWORDS["alice"])
    alice.get(f"{served.base}/review/settings")
    alice.find_element(By.NAME, "hold_to_peek").click()
    alice.find_element(By.CSS_SELECTOR, ".wellbeing button[type=submit]").click()
    WebDriverWait(alice, 10).until(lambda d: "Saved." in d.page_source)
    alice.get(f"{served.base}/review")
    assert _current(alice) == first
    body = alice.find_element(By.TAG_NAME, "body")
    ActionChains(alice).key_down(Keys.SPACE, body).perform()
    WebDriverWait(alice, 5).until(lambda d: pages._filter(d) == "none")
    ActionChains(alice).key_up(Keys.SPACE, body).perform()
    WebDriverWait(alice, 5).until(lambda d: "blur" in pages._filter(d))
    button = alice.find_element(By.CSS_SELECTOR, '.item.current [data-action="reveal"]')
    ActionChains(alice).click_and_hold(button).perform()
    WebDriverWait(alice, 5).until(lambda d: pages._filter(d) == "none")
    ActionChains(alice).move_to_element(alice.find_element(By.TAG_NAME, "h1")).release().perform()  # let go elsewhere
    WebDriverWait(alice, 5).until(lambda d: "blur" in pages._filter(d))
    alice.find_element(By.CSS_SELECTOR, '.item.current [data-decision="safe"]').click()  # after a peek, by mouse
    pages._status(alice, "Decided safe")
    assert _item(served, first)["label"] == "safe"

    bob = browsers(DESKTOP)
    pages._sign_in(bob, served.base, "bob", PASSWORDS["bob"])
    bob.get(f"{served.base}/review/settings")
    bob.find_element(By.NAME, "blur").click()  # off
    bob.find_element(By.CSS_SELECTOR, ".wellbeing button[type=submit]").click()
    WebDriverWait(bob, 10).until(lambda d: "Saved." in d.page_source)
    bob.get(f"{served.base}/review")
    assert _current(bob) == second
    WebDriverWait(bob, 10).until(lambda d: _revealed(second, "bob"))  # seen on opening: counted
    # The search page blurs its thumbnails for every moderator until a click, which counts.
    bob.get(f"{served.base}/review/search?status=pending")
    thumb = f'tr[data-review-id="{second}"] .thumb img'
    assert "blur" in _script(bob, f"return getComputedStyle(document.querySelector('{thumb}')).filter")
    _no_script_errors(alice)
    _no_script_errors(bob)

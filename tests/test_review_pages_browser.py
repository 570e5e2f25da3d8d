"""The moderator's pages in a real headless Chromium (Debian's chromium and chromium-driver, driven
by Selenium), against gunicorn with 2 workers: sign in, blur and reveal, decide by key and by button,
two moderators on one item, history and undo, insights, and axe-core on every page. Screenshots go
to .cache/screenshots/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from axe_selenium_python import Axe
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from scripts import hostile_images as bombs
from tests.served import Gunicorn, call
from tests.support import REPO, ImageServer

APP = "a" * 43
MODERATION = "m" * 43
PASSWORDS = {"alice": "alice's long password", "bob": "bob's long password!", "carol": "carol's long password"}
SHOTS = REPO / ".cache" / "screenshots"
STRICT = "detail=true&adult_threshold=0.9999&safe_threshold=0.9999"


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("Chromium is missing: scripts/test installs Debian's chromium and chromium-driver")
    return chromium, driver


@pytest.fixture()
def browsers() -> Iterator[Callable[..., WebDriver]]:
    chromium, driver_path = _browser_paths()
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers on the network
    made: list[WebDriver] = []

    def make(size: tuple[int, int] = (1100, 900)) -> WebDriver:
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        window = f"--window-size={size[0]},{size[1]}"
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", window):
            options.add_argument(argument)
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        driver.set_page_load_timeout(30)
        made.append(driver)
        return driver

    yield make
    for driver in made:
        driver.quit()


@pytest.fixture()
def served(start_gunicorn: Callable[..., Gunicorn], image_server: ImageServer, tmp_path: Path) -> Gunicorn:
    env = {
        "NSFW_REVIEW": "true",
        "NSFW_DATA_DIR": str(tmp_path / "data"),
        "NSFW_API_KEYS": f"app:{APP},moderation:{'m' * 43}:review",
        "NSFW_SECRET_KEY": "s" * 40,
    }
    for name, password in PASSWORDS.items():  # on a fresh data folder: the command migrates first
        done = subprocess.run(
            [sys.executable, "-m", "nsfw", "moderators", "add", name],
            cwd=REPO,
            env={**env, "PATH": os.environ["PATH"]},
            input=password + "\n",
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
    lead = subprocess.run(  # carol leads
        [sys.executable, "-m", "nsfw", "moderators", "role", "carol", "lead"],
        cwd=REPO,
        env={**env, "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
    )
    assert lead.returncode == 0, lead.stderr
    server = start_gunicorn(env)
    for n in range(3):  # three images the strict thresholds leave to a human
        url = image_server.add_file(f"/q{n}.jpg", bombs.jpeg_flat(64 + 16 * n, 48))
        request = urllib.request.Request(
            f"{server.base}/predict?url={urllib.parse.quote(url)}&{STRICT}&ref=upload-{n}", method="POST"
        )
        request.add_header("Authorization", f"Bearer {APP}")
        with urllib.request.urlopen(request, timeout=20) as answer:
            assert json.loads(answer.read())["review"]["status"] == "pending"
    return server


def _sign_in(driver: WebDriver, base: str, name: str, password: str) -> None:
    driver.get(f"{base}/review/login")
    page = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.NAME, "username").send_keys(name)
    driver.find_element(By.NAME, "password").send_keys(password + Keys.ENTER)
    WebDriverWait(driver, 10).until(_gone(page))  # the answer to the form has loaded


def _gone(element: Any) -> Callable[[WebDriver], bool]:
    """Selenium's staleness_of, also for ChromeDriver 156's other way of saying that a node left the
    page while it was asked about it ("unknown error: ... does not belong to the document"; seen once
    in CI), which staleness_of raises instead of taking as an answer."""

    def check(_: WebDriver) -> bool:
        try:
            element.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" in str(exc):
                return True
            raise
        return False

    return check


_OPEN_ITEM = "const e = document.querySelector('.item.current'); return e && e.dataset.reviewId;"


def _current(driver: WebDriver) -> str:
    """The id of the item the page has open (read in the page: items come and go)."""
    return str(WebDriverWait(driver, 10).until(lambda d: d.execute_script(_OPEN_ITEM)))


def _filter(driver: WebDriver) -> str:
    image = driver.find_element(By.CSS_SELECTOR, ".item.current img")
    return str(driver.execute_script("return getComputedStyle(arguments[0]).filter", image))


def _status(driver: WebDriver, contains: str) -> str:
    return str(
        WebDriverWait(driver, 10).until(
            lambda d: (text := d.find_element(By.ID, "status").text) and contains in text and text
        )
    )


def _item(served: Gunicorn, review_id: str) -> dict[str, Any]:
    return dict(json.loads(call(served, "GET", f"/reviews/{review_id}", MODERATION)[1]))


def _no_serious_violations(driver: WebDriver, page: str) -> None:
    axe = Axe(driver)
    axe.inject()
    results = axe.run()
    bad = [v for v in results["violations"] if v["impact"] in ("serious", "critical")]
    shown = "; ".join(f"{v['id']}: {v['help']} ({v['nodes'][0].get('failureSummary', '')})" for v in bad)
    assert not bad, f"{page}: {shown}"


def _shot(driver: WebDriver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / name))


def _press(driver: WebDriver, keys: str) -> None:
    driver.find_element(By.TAG_NAME, "body").send_keys(keys)


def test_a_moderators_hour(served: Gunicorn, browsers: Callable[[], WebDriver]) -> None:
    base = served.base
    alice = browsers()
    _sign_in(alice, base, "alice", "not her password")
    assert "Wrong name or password" in alice.page_source
    assert alice.find_element(By.NAME, "username").get_attribute("value") == "alice"  # the name stays
    assert not alice.find_elements(By.CSS_SELECTOR, "nav")  # no pages to offer a signed-out visitor
    _no_serious_violations(alice, "login")
    alice.find_element(By.NAME, "username").clear()
    _sign_in(alice, base, "alice", PASSWORDS["alice"])
    first = _current(alice)
    assert "blur" in _filter(alice)  # blurred by default
    assert _item(served, first)["claimed_by"] is None  # looking claims nothing
    _shot(alice, "queue-blurred.png")
    _no_serious_violations(alice, "queue")

    _press(alice, "a")  # a decision before the image was revealed does nothing
    _status(alice, "Reveal the image first")
    assert _item(served, first)["status"] == "pending"

    reveal = alice.find_element(By.CSS_SELECTOR, '.item.current [data-action="reveal"]')
    assert reveal.get_attribute("aria-pressed") == "false"
    _press(alice, Keys.SPACE)  # revealing is acting on it: it is claimed
    WebDriverWait(alice, 5).until(lambda d: _filter(d) == "none")
    assert reveal.get_attribute("aria-pressed") == "true" and reveal.text.startswith("Blur again")
    WebDriverWait(alice, 5).until(lambda d: _item(served, first)["claimed_by"] == "alice")
    _shot(alice, "queue-revealed.png")

    _press(alice, "a")  # adult, by key
    WebDriverWait(alice, 10).until(lambda d: _current(d) != first)
    second = _current(alice)
    assert "blur" in _filter(alice)  # blurred again on the next item

    # A second moderator is offered the oldest item no one holds: alice only looks at hers, so it is
    # open to bob; once alice acts on it, bob's page marks it claimed without a key press.
    bob = browsers()
    _sign_in(bob, base, "bob", PASSWORDS["bob"])
    assert _current(bob) == second
    _press(alice, Keys.SPACE)
    WebDriverWait(bob, 15).until(lambda d: "Claimed by alice" in d.find_element(By.CSS_SELECTOR, ".item.current").text)

    alice.find_element(By.CSS_SELECTOR, '.item.current [data-decision="safe"]').click()  # safe, by button
    WebDriverWait(alice, 10).until(lambda d: _current(d) not in (first, second))
    # Decided elsewhere: it leaves bob's list by itself, and bob is told.
    WebDriverWait(bob, 15).until(lambda d: _current(d) != second)
    assert second not in bob.execute_script(
        "return Array.from(document.querySelectorAll('[data-review-id]')).map(e => e.dataset.reviewId)"
    )

    alice.get(f"{base}/review/history")
    rows = alice.find_elements(By.CSS_SELECTOR, "tr[data-review-id]")
    assert [row.get_attribute("data-review-id") for row in rows] == [second, first]
    assert "adult" in rows[1].text and "safe" in rows[0].text and "alice" in rows[0].text
    _shot(alice, "history.png")
    _no_serious_violations(alice, "history")
    rows[0].find_element(By.CSS_SELECTOR, '[data-action="undo"]').click()  # an undo needs a reason: not sent
    assert alice.current_url.endswith("/review/history")
    rows[0].find_element(By.NAME, "reason").send_keys("pressed the wrong key")
    rows[0].find_element(By.CSS_SELECTOR, '[data-action="undo"]').click()  # undo the safe one
    WebDriverWait(alice, 10).until(lambda d: d.current_url.endswith("/review"))
    WebDriverWait(alice, 10).until(
        lambda d: (
            second
            in d.execute_script(
                "return Array.from(document.querySelectorAll('[data-review-id]')).map(e => e.dataset.reviewId)"
            )
        )
    )

    alice.get(f"{base}/review/insights")
    assert (
        alice.find_element(By.CSS_SELECTOR, "figure svg.chart") and "Learned from 1 decided items" in alice.page_source
    )
    _shot(alice, "insights.png")
    _no_serious_violations(alice, "insights")
    for driver in (alice, bob):
        wrong_password = "/review/login - Failed to load resource: the server responded with a status of 401"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and wrong_password not in e["message"]]
        assert not errors, errors  # no script error, and no failed request (the favicon's 401 was one)


def test_a_queued_video_says_it_is_one_and_shows_each_frames_time(
    served: Gunicorn, browsers: Callable[[], WebDriver], image_server: ImageServer
) -> None:
    """A video in the queue: the note says "Video" and which frame decided, by its time; the strip
    names every judged frame by its time, rendered in the page's own script, without an error."""
    from PIL import Image

    from scripts import hostile_videos as videos
    from tests.support import corpus_bytes

    safe = Image.open(__import__("io").BytesIO(corpus_bytes("grace_hopper.jpg")))
    adult = Image.open(__import__("io").BytesIO(corpus_bytes("microaneurysms.png")))
    clip = videos.marked_clip(safe, adult, (5.0, 6.0), codec="vp9", container="webm")
    url = image_server.add_file("/clip.webm", clip, "video/webm")
    request = urllib.request.Request(
        f"{served.base}/predict?url={urllib.parse.quote(url)}&{STRICT}&ref=video-1", method="POST"
    )
    request.add_header("Authorization", f"Bearer {APP}")
    with urllib.request.urlopen(request, timeout=30) as answer:
        review_id = json.loads(answer.read())["review"]["id"]
    bob = browsers()
    _sign_in(bob, served.base, "bob", PASSWORDS["bob"])
    _current(bob)
    read = (
        "const e = document.querySelector('[data-review-id=\"' + arguments[0] + '\"]');"
        "return e && [e.querySelector('[data-field=\"animation\"]').textContent,"
        " Array.from(e.querySelectorAll('[data-field=\"strip\"] li span')).map(s => s.textContent)];"
    )
    note, captions = WebDriverWait(bob, 10).until(lambda d: d.execute_script(read, review_id))
    assert note.startswith("Video: ") and " s, the one that decided the verdict" in note, note
    assert captions and all(caption.startswith("frame at ") for caption in captions), captions
    assert any("decided the verdict" in caption for caption in captions)
    errors = [entry for entry in bob.get_log("browser") if entry["source"] == "javascript"]
    assert not errors, errors  # (the favicon's 401 is the network's, not the page's script)


def test_a_decision_takes_its_pending_near_duplicate_and_says_so(
    served: Gunicorn, browsers: Callable[[], WebDriver], image_server: ImageServer
) -> None:
    """Two copies of one photo pending (the original and a half-size PNG): deciding the first with the
    key decides the second with it, and the page says so and drops it from the list."""
    import io

    from PIL import Image

    from tests.support import corpus_bytes

    moderation = "m" * 43
    pending = call(served, "GET", "/reviews", moderation)[1]
    for item in json.loads(pending)["items"]:  # the fixture's three flat images, out of the way
        call(served, "POST", f"/reviews/{item['id']}/decision", moderation, {"label": "safe"})
    photo = Image.open(io.BytesIO(corpus_bytes("grace_hopper.jpg"))).convert("RGB")
    ids = []
    for name, image in (("original", photo), ("half", photo.resize((photo.width // 2, photo.height // 2)))):
        out = io.BytesIO()
        image.save(out, "PNG")
        url = image_server.add_file(f"/{name}.png", out.getvalue(), "image/png")
        stricter = "detail=true&adult_threshold=0.99999&safe_threshold=0.99999"  # the model is all but sure
        request = urllib.request.Request(
            f"{served.base}/predict?url={urllib.parse.quote(url)}&{stricter}", method="POST"
        )
        request.add_header("Authorization", f"Bearer {APP}")
        with urllib.request.urlopen(request, timeout=20) as answer:
            found = json.loads(answer.read())
            assert "review" in found, found
            ids.append(found["review"]["id"])
    alice = browsers()
    _sign_in(alice, served.base, "alice", PASSWORDS["alice"])
    assert _current(alice) == ids[0]
    alice.find_element(By.TAG_NAME, "body").send_keys(Keys.SPACE + "a")
    status = WebDriverWait(alice, 10).until(
        lambda d: (text := d.find_element(By.ID, "status").text) and "near-duplicate" in text and text
    )
    assert status == "Decided adult. 1 near-duplicate was decided with it.", status
    assert not alice.execute_script("return document.querySelectorAll('.item').length")
    item = json.loads(call(served, "GET", f"/reviews/{ids[1]}", moderation)[1])
    assert item["status"] == "decided" and item["label"] == "adult" and item["decided_by"] == "alice"

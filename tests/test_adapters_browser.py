"""The adapter on the insights page, in headless Chromium against gunicorn with 2 workers: a lead trains a
version from the team's decisions (the training runs off the request), reads its report card, serves
it; a moderator sees the card and no buttons. axe-core at desktop and phone sizes; the screenshot goes
to .cache/screenshots/adapter-card.png (copied to docs/screenshots/)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from nsfw.model import Classifier
from nsfw.review.queue import Candidate, ReviewQueue
from nsfw.store.engine import make_engine
from tests import test_review_pages_browser as pages
from tests.served import Gunicorn
from tests.test_adapters import PHOTOS, _embed, drawing, photo

browsers, served = pages.browsers, pages.served  # the fixtures: Chromium, and gunicorn with the queue on
PASSWORDS = pages.PASSWORDS


def _decided(tmp_path: Path, litert: Classifier) -> None:
    """The team's 60 decisions (drawings adult, photos safe), with the real model's embeddings."""
    images = [drawing(n) for n in range(30)] + [photo(PHOTOS[n % len(PHOTOS)], n // len(PHOTOS) * 2) for n in range(30)]
    x, adult = _embed(litert, images)
    engine = make_engine(f"sqlite:///{tmp_path / 'data' / 'nsfw.db'}")
    try:
        queue = ReviewQueue(engine, lease=120, webhooks=False, match=False)
        for n, (vector, score) in enumerate(zip(x, adult, strict=True)):
            scores = {"drawings": 0.0, "hentai": 0.0, "neutral": 1 - score, "porn": score, "sexy": 0.0}
            candidate = Candidate(
                f"{n + 1000:064x}", "audit", None, "app", None, "mobilenet_v2", "nsfwjs-4.4.0", scores, "safe", "r",
                embedding=vector.astype("<f4").tobytes(),
            )  # fmt: skip
            review_id = queue.enqueue(candidate, lambda: None).review_id
            queue.decide(review_id, "alice", "adult" if n < 30 else "safe")
    finally:
        engine.dispose()


def _fits(driver: WebDriver) -> bool:
    return bool(driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth"))


def test_a_lead_trains_reads_the_card_and_serves_it(
    served: Gunicorn, browsers: Callable[..., WebDriver], tmp_path: Path, litert: Classifier
) -> None:
    _decided(tmp_path, litert)
    carol = browsers((1280, 900))
    pages._sign_in(carol, served.base, "carol", PASSWORDS["carol"])
    carol.get(f"{served.base}/review/insights")
    assert "No adapter is served." in carol.page_source
    page = carol.find_element(By.TAG_NAME, "html")
    carol.find_element(By.CSS_SELECTOR, 'button[value="train"]').click()
    WebDriverWait(carol, 10).until(pages._gone(page))  # the form's answer (a redirect back) has loaded
    deadline = time.monotonic() + 60
    while "Version 1: candidate, passed" not in carol.page_source and time.monotonic() < deadline:
        time.sleep(0.5)  # the training runs on its own thread in one of the workers
        carol.get(f"{served.base}/review/insights")
    card = carol.find_element(By.CSS_SELECTOR, 'section.report-card[data-version="1"]')
    assert "Version 1: candidate, passed" in card.text
    assert "60 decisions (30 adult, 30 safe) of 60 distinct pictures" in card.text
    rows = {
        row.find_element(By.TAG_NAME, "th").text: [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in card.find_elements(By.CSS_SELECTOR, "table.card tbody tr")
    }
    model, adapter = (float(value) for value in rows["Agreement with the moderators (balanced, %)"])
    assert adapter >= 90 and model <= 50
    pages._no_serious_violations(carol, "insights with a report card")
    page = carol.find_element(By.TAG_NAME, "html")
    carol.find_element(By.CSS_SELECTOR, 'button[value="promote"]').click()
    WebDriverWait(carol, 10).until(pages._gone(page))
    assert "Serving version 1." in carol.page_source and "Version 1: promoted, passed" in carol.page_source
    history = carol.find_element(By.CSS_SELECTOR, "table.adapter-history").text
    assert "carol trained version 1" in history.replace("\n", " ") or (
        "trained version 1" in history and "promoted version 1" in history
    )
    pages._shot(carol, "adapter-card.png")
    pages._no_serious_violations(carol, "insights, serving")
    phone = browsers((390, 844))
    pages._sign_in(phone, served.base, "alice", PASSWORDS["alice"])
    phone.get(f"{served.base}/review/insights")
    assert "Serving version 1." in phone.page_source and "Agreement with the moderators" in phone.page_source
    assert not phone.find_elements(By.CSS_SELECTOR, ".adapter-actions, button[value='promote']")  # a moderator reads
    assert _fits(phone)
    pages._no_serious_violations(phone, "insights on a phone")

"""Swagger UI at /docs in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium, as tests/test_review_pages_browser.py does), against gunicorn: under its CSP (DOCS_CSP) it
renders every operation, takes a key through Authorize, and tries a review's thumbnail, with no
Content Security Policy violation in the browser's log or its securitypolicyviolation events. The
thumbnail walks every source the policy allows: the fetch (connect-src 'self'), the copy icon of the
curl line (img-src data:) and the picture itself (img-src blob:)."""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from nsfw.web.openapi import DOCS_CSP, document
from scripts import hostile_images as bombs
from tests.served import Gunicorn
from tests.support import ImageServer

KEY = "k" * 43
STRICT = "detail=true&adult_threshold=0.9999&safe_threshold=0.9999"
# Recorded from the page's first script on (a DevTools script runs before the page's own, whatever
# the page's CSP): every violation, whether or not the console reports it.
_RECORD_VIOLATIONS = (
    "window.violations = [];"
    "document.addEventListener('securitypolicyviolation', e => window.violations.push("
    "e.violatedDirective + ' ' + e.blockedURI + ' ' + e.sourceFile));"
)


@pytest.fixture()
def browser() -> Iterator[WebDriver]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("Chromium is missing: scripts/test installs Debian's chromium and chromium-driver")
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers on the network
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(30)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _RECORD_VIOLATIONS})
    yield driver
    driver.quit()


@pytest.fixture()
def served(start_gunicorn: Callable[..., Gunicorn], image_server: ImageServer, tmp_path: Path) -> tuple[str, str]:
    """Keys and the review queue on, one pending item: (the server's base URL, the item's id)."""
    server = start_gunicorn(
        {
            "NSFW_REVIEW": "true",
            "NSFW_DATA_DIR": str(tmp_path / "data"),
            "NSFW_API_KEYS": f"app:{KEY}:predict+review",
            "NSFW_SECRET_KEY": "s" * 40,
        }
    )
    url = image_server.add_file("/q.jpg", bombs.jpeg_flat(64, 48))
    request = urllib.request.Request(f"{server.base}/predict?url={urllib.parse.quote(url)}&{STRICT}", method="POST")
    request.add_header("Authorization", f"Bearer {KEY}")
    with urllib.request.urlopen(request, timeout=20) as answer:
        review = json.loads(answer.read())["review"]
    assert review["status"] == "pending"
    return server.base, review["id"]


def _operation_ids() -> set[str]:
    return {operation["operationId"] for item in document()["paths"].values() for operation in item.values()}


def _violations(browser: WebDriver) -> list[str]:
    """The page's CSP violations: the browser log's reports and the recorded events."""
    logged = [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]
    ]
    return logged + list(browser.execute_script("return window.violations") or [])


def _authorize_and_try_the_thumbnail(browser: WebDriver, base: str, review_id: str) -> int:
    """Render /docs/, give the key to Authorize, try the item's thumbnail: the picture's width."""
    wait = WebDriverWait(browser, 20)
    browser.get(f"{base}/docs/")
    wait.until(lambda d: d.find_elements(By.ID, "operations-default-predict_get"))
    rendered = {e.get_attribute("id") for e in browser.find_elements(By.CSS_SELECTOR, ".opblock[id]")}
    assert rendered == {f"operations-default-{name}" for name in _operation_ids()}

    # Authorize: the X-API-Key scheme takes the key (its form handles its own submit).
    browser.find_element(By.CSS_SELECTOR, ".btn.authorize").click()
    scheme = wait.until(
        lambda d: d.find_element(By.XPATH, "//div[@class='auth-container'][.//code[text()='X-API-Key']]")
    )
    scheme.find_element(By.TAG_NAME, "input").send_keys(KEY)
    scheme.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda d: scheme.find_elements(By.CSS_SELECTOR, "[aria-label='Remove authorization']"))
    browser.find_element(By.CSS_SELECTOR, ".modal-ux .close-modal").click()

    # Try it out: the thumbnail, fetched with the key and shown as a blob: image.
    operation = browser.find_element(By.ID, "operations-default-review_thumbnail")
    operation.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    wait.until(lambda d: operation.find_elements(By.CSS_SELECTOR, ".try-out__btn"))[0].click()
    operation.find_element(By.CSS_SELECTOR, "tr[data-param-name='review_id'] input").send_keys(review_id)
    operation.find_element(By.CSS_SELECTOR, ".execute").click()
    status = wait.until(
        lambda d: operation.find_elements(By.CSS_SELECTOR, ".live-responses-table .response .response-col_status")
    )
    assert status[0].text.strip() == "200"
    picture = wait.until(lambda d: operation.find_elements(By.CSS_SELECTOR, ".live-responses-table img"))[0]
    assert (picture.get_attribute("src") or "").startswith("blob:")
    wait.until(lambda d: d.execute_script("return arguments[0].complete", picture))  # loaded, or refused
    return int(browser.execute_script("return arguments[0].naturalWidth", picture))


def test_swagger_ui_renders_and_tries_an_operation_under_its_csp(served: tuple[str, str], browser: WebDriver) -> None:
    base, review_id = served
    with urllib.request.urlopen(f"{base}/docs/", timeout=10) as page:
        assert page.headers["Content-Security-Policy"] == DOCS_CSP
    try:
        width = _authorize_and_try_the_thumbnail(browser, base, review_id)
    except TimeoutException as exc:
        pytest.fail(f"Swagger UI stalled ({exc.msg or 'a wait timed out'}); CSP violations: {_violations(browser)}")
    assert not _violations(browser)
    assert width > 0

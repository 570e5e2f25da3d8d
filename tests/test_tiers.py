"""Two tiers: when the first verdict is unknown, a second model or the operator's endpoint (fakes
here) decides."""

from __future__ import annotations

import http.server
import json
import time
from dataclasses import replace

import pytest
from flask.testing import FlaskClient

from nsfw import create_app
from nsfw.config import ConfigError, Settings
from nsfw.model.specs import OPEN_NSFW_SPEC
from tests.support import FakeClassifier, ImageServer, corpus_bytes, send

UNSURE = (0.1, 0.1, 0.4, 0.2, 0.2)  # hentai+porn+sexy 0.5, drawings+neutral 0.5: unknown at 0.7 / 0.7
SURE_SAFE = (0.1, 0.0, 0.9, 0.0, 0.0)


class FakeSecondTier:
    """A route that records the bytes it was sent and answers a fixed body (or sleeps first)."""

    def __init__(self, answer: bytes, status: int = 200, delay: float = 0.0) -> None:
        self.received: list[bytes] = []
        self.answer, self.status, self.delay = answer, status, delay

    def __call__(self, req: http.server.BaseHTTPRequestHandler) -> None:
        self.received.append(req.rfile.read(int(req.headers["Content-Length"])))
        time.sleep(self.delay)
        try:
            send(self.status, self.answer, {"Content-Type": "application/json"})(req)
        except OSError:
            pass  # we gave up on it, as we should


def _client(settings: Settings, image_server: ImageServer, tier: FakeSecondTier, probabilities: tuple) -> FlaskClient:
    image_server.routes["/tier2"] = tier
    tiered = replace(settings, second_tier_url=image_server.url("/tier2"), second_tier_timeout=0.5)
    return create_app(tiered, FakeClassifier(probabilities=probabilities)).test_client()


def _ask(client: FlaskClient, image_server: ImageServer, detail: bool = True) -> dict:
    data = corpus_bytes("rocket.jpg")
    url = image_server.add_file("/img.jpg", data)
    query = {"url": url, "detail": "true"} if detail else {"url": url}
    response = client.post("/predict", query_string=query)
    assert response.status_code == 200
    return response.get_json()


@pytest.mark.parametrize(
    ("p", "label"),
    [(0.99, "adult"), (0.95, "adult"), (0.01, "safe"), (0.05, "safe"), (0.5, "unknown")],
)
def test_the_second_tier_decides_the_gray_zone(
    p: float, label: str, settings: Settings, image_server: ImageServer
) -> None:
    tier = FakeSecondTier(json.dumps({"nsfw": p}).encode())
    answer = _ask(_client(settings, image_server, tier, UNSURE), image_server)
    assert answer["verdict"]["label"] == label and answer["verdict"]["reason"].startswith("second tier endpoint nsfw")
    assert answer["tier"] == 2 and answer["second_tier"] == {"nsfw": p}
    assert tier.received == [corpus_bytes("rocket.jpg")]  # the image itself, fetched once


def test_a_sure_first_tier_and_a_flat_answer_never_ask(settings: Settings, image_server: ImageServer) -> None:
    tier = FakeSecondTier(b'{"nsfw": 0.99}')
    sure = _ask(_client(settings, image_server, tier, SURE_SAFE), image_server)
    assert sure["verdict"]["label"] == "safe" and sure["tier"] == 1 and "second_tier" not in sure
    flat = _ask(_client(settings, image_server, tier, UNSURE), image_server, detail=False)
    assert set(flat) == {"drawings", "hentai", "neutral", "porn", "sexy"}
    assert tier.received == []


def test_a_second_tier_that_times_out_leaves_the_first_verdict(settings: Settings, image_server: ImageServer) -> None:
    tier = FakeSecondTier(b'{"nsfw": 0.99}', delay=3.0)
    client = _client(settings, image_server, tier, UNSURE)
    started = time.monotonic()
    answer = _ask(client, image_server)
    assert time.monotonic() - started < 1.5  # the 0.5 s second-tier deadline, not the 3 s sleep
    assert answer["verdict"]["label"] == "unknown" and answer["tier"] == 1
    assert answer["second_tier"]["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"<html>oops</html>", 200), (b'{"nsfw": 1.5}', 200), (b'{"p": 0.9}', 200), (b'{"nsfw": 0.9}', 500)],
)
def test_a_second_tier_that_misbehaves_leaves_the_first_verdict(
    body: bytes, status: int, settings: Settings, image_server: ImageServer
) -> None:
    answer = _ask(_client(settings, image_server, FakeSecondTier(body, status), UNSURE), image_server)
    assert answer["verdict"]["label"] == "unknown" and answer["tier"] == 1
    assert answer["second_tier"]["error"]["code"] == "upstream_error"
    assert "oops" not in json.dumps(answer)


def test_the_second_tier_goes_through_the_guard(settings: Settings, image_server: ImageServer) -> None:
    """An endpoint on a network nobody opened is refused like any URL."""
    tier = FakeSecondTier(b'{"nsfw": 0.99}')
    client = _client(replace(settings, allowed_networks=()), image_server, tier, UNSURE)
    data = corpus_bytes("rocket.jpg")
    answer = client.post("/predict?detail=true", data=data, content_type="image/jpeg").get_json()
    assert answer["tier"] == 1 and answer["second_tier"]["error"]["code"] == "url_not_allowed"
    assert tier.received == []


def test_second_tier_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="NSFW_SECOND_TIER_ADULT_THRESHOLD"):
        Settings.from_env({"NSFW_SECOND_TIER_ADULT_THRESHOLD": "0.04"})
    with pytest.raises(ConfigError, match="NSFW_SECOND_TIER_URL"):
        Settings.from_env({"NSFW_SECOND_TIER_URL": "ftp://example.com/"})
    with pytest.raises(ConfigError, match="NSFW_SECOND_TIER_MODEL"):
        Settings.from_env({"NSFW_SECOND_TIER_MODEL": "open_nsfw"})  # not served
    with pytest.raises(ConfigError, match="NSFW_SECOND_TIER_MODEL"):
        Settings.from_env(
            {"NSFW_MODELS": "open_nsfw", "NSFW_SECOND_TIER_MODEL": "open_nsfw", "NSFW_SECOND_TIER_URL": "http://x/"}
        )
    assert Settings.from_env({"NSFW_MODELS": "open_nsfw", "NSFW_SECOND_TIER_MODEL": "open_nsfw"}).served_models == (
        "mobilenet_v2",
        "open_nsfw",
    )


def _model_tiered(settings: Settings, first: tuple, nsfw: float) -> tuple[FlaskClient, FakeClassifier]:
    second = FakeClassifier(spec=OPEN_NSFW_SPEC, probabilities=(1 - nsfw, nsfw))
    tiered = replace(settings, models=("open_nsfw",), second_tier_model="open_nsfw")
    return create_app(tiered, [FakeClassifier(probabilities=first), second]).test_client(), second


@pytest.mark.parametrize(("p", "label"), [(0.97, "adult"), (0.02, "safe"), (0.5, "unknown")])
def test_a_second_model_decides_the_gray_zone(
    p: float, label: str, settings: Settings, image_server: ImageServer
) -> None:
    client, second = _model_tiered(settings, UNSURE, p)
    answer = _ask(client, image_server)
    assert answer["verdict"]["label"] == label and answer["tier"] == 2
    assert answer["verdict"]["reason"].startswith("second tier open_nsfw nsfw")
    assert answer["second_tier"] == {"model": "open_nsfw", "nsfw": pytest.approx(p)}
    assert answer["model"]["name"] == "mobilenet_v2"  # the scores are still the first model's
    (batch,) = second.seen  # it ran on the same image, with its own preprocessing
    assert batch.shape == (1, 224, 224, 3) and batch.min() < -100  # BGR minus the mean, not [0, 1]


def test_a_sure_first_model_never_runs_the_second(settings: Settings, image_server: ImageServer) -> None:
    client, second = _model_tiered(settings, SURE_SAFE, 0.99)
    answer = _ask(client, image_server)
    assert answer["verdict"]["label"] == "safe" and answer["tier"] == 1 and "second_tier" not in answer
    assert second.seen == []

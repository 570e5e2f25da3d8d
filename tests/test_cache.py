"""The result cache (nsfw/cache.py): its keys, its layers, its failures, and single flight."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace

import numpy as np
from prometheus_client import REGISTRY

from nsfw import create_app
from nsfw.config import Settings
from nsfw.model.specs import INCEPTION_V3
from tests.servers import RedisServer
from tests.support import FakeClassifier, ImageServer, corpus_bytes
from tests.test_review import _jpeg

JPEG = {"Content-Type": "image/jpeg"}


def _post(client, image: bytes, query: str = "") -> bytes:  # type: ignore[no-untyped-def]
    answer = client.post(f"/predict?{query}", data=image, headers=JPEG)
    assert answer.status_code == 200, answer.get_json()
    return bytes(answer.data)


def test_a_hit_skips_inference_and_answers_the_same_bytes(settings: Settings) -> None:
    fake = FakeClassifier()
    client = create_app(replace(settings, cache_size=8), fake).test_client()
    image = corpus_bytes("grace_hopper.jpg")
    first, second = _post(client, image), _post(client, image)
    assert first == second and len(fake.seen) == 1
    detailed = client.post("/predict?detail=true", data=image, headers=JPEG).get_json()
    assert detailed["cache"] == "hit" and len(fake.seen) == 1
    assert client.post("/predict?detail=true", data=_jpeg((1, 2, 3)), headers=JPEG).get_json()["cache"] == "miss"


def test_a_changed_byte_another_resize_model_or_version_never_hits(settings: Settings) -> None:
    fake, other = FakeClassifier(), FakeClassifier(spec=INCEPTION_V3)
    client = create_app(replace(settings, cache_size=64, models=("mobilenet_v2", "inception_v3")), [fake, other])
    client = client.test_client()
    image = corpus_bytes("grace_hopper.jpg")
    _post(client, image)
    changed = bytearray(image)
    changed[-3] ^= 1  # inside the entropy-coded data: still a JPEG, other bytes
    _post(client, bytes(changed))
    _post(client, image, "resize=gantman")
    _post(client, image, "model=inception_v3")
    assert len(fake.seen) == 3 and len(other.seen) == 1
    newer = FakeClassifier(spec=replace(fake.spec, version="nsfwjs-9.9.9"))
    bumped = create_app(replace(settings, cache_size=64), newer)
    bumped.extensions["nsfw"].cache = client.application.extensions["nsfw"].cache  # the same cache, a new version
    _post(bumped.test_client(), image)
    assert len(newer.seen) == 1


def test_an_evicted_entry_is_recomputed_to_the_same_answer(settings: Settings) -> None:
    fake = FakeClassifier()
    client = create_app(replace(settings, cache_size=2), fake).test_client()
    images = [_jpeg((n * 90, 40, 80)) for n in range(3)]
    answers = [_post(client, image) for image in images]
    assert _post(client, images[0]) == answers[0] and len(fake.seen) == 4  # evicted: classified again
    assert _post(client, images[2]) == answers[2] and len(fake.seen) == 4  # still there


@dataclass
class _Gate(FakeClassifier):
    """A classifier whose first call waits until the test lets it go."""

    entered: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.go.wait(10)
        return super().predict(batch)


def test_concurrent_requests_for_the_same_bytes_run_the_model_once(settings: Settings) -> None:
    gate = _Gate()
    app = create_app(replace(settings, cache_size=8), gate)
    image = _jpeg((200, 100, 50))
    answers: list[bytes] = []
    first = threading.Thread(target=lambda: answers.append(_post(app.test_client(), image)))
    first.start()
    assert gate.entered.wait(10)
    second = threading.Thread(target=lambda: answers.append(_post(app.test_client(), image)))
    second.start()  # waits for the model behind the first, then finds its result
    gate.go.set()
    first.join(10)
    second.join(10)
    assert len(answers) == 2 and answers[0] == answers[1] and len(gate.seen) == 1


def test_instances_share_results_through_redis_and_miss_when_it_is_gone(
    settings: Settings, image_server: ImageServer, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    server = RedisServer(tmp_path)
    try:
        shared = replace(settings, cache_size=8, redis_url=server.uri)
        one, two = FakeClassifier(), FakeClassifier()
        first = create_app(shared, one).test_client()
        second = create_app(shared, two).test_client()
        image = _jpeg((5, 6, 7))
        assert _post(first, image) == _post(second, image)
        assert len(one.seen) == 1 and len(two.seen) == 0  # the second instance never ran the model
        server.stop()
        errors = REGISTRY.get_sample_value("nsfw_cache_errors_total", {"operation": "get"}) or 0
        other = _jpeg((9, 9, 9))
        assert _post(second, other) and len(two.seen) == 1  # a miss, answered
        assert (REGISTRY.get_sample_value("nsfw_cache_errors_total", {"operation": "get"}) or 0) > errors
    finally:
        server.stop()


class _Gated:
    """A route that answers only when the test opens the gate, so the requests meet for certain."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status, self.body, self.gate = status, body, threading.Event()

    def __call__(self, req) -> None:  # type: ignore[no-untyped-def]
        self.gate.wait(10)
        req.send_response(self.status)
        req.send_header("Content-Type", "image/jpeg")
        req.send_header("Content-Length", str(len(self.body)))
        req.end_headers()
        req.wfile.write(self.body)


def _three_at_once(app, url: str, route: _Gated) -> list:  # type: ignore[no-untyped-def]
    """Three requests for url, the route held until two of them wait on the first's download."""
    import time

    answers: list = []
    threads = [threading.Thread(target=lambda: answers.append(app.test_client().post(f"/predict?url={url}")))]
    threads += [
        threading.Thread(target=lambda: answers.append(app.test_client().post(f"/predict?url={url}"))) for _ in range(2)
    ]
    threads[0].start()
    service = app.extensions["nsfw"]
    deadline = time.monotonic() + 10
    while url not in service._flights and time.monotonic() < deadline:
        time.sleep(0.01)
    for thread in threads[1:]:
        thread.start()
    while service._flights.get(url) is not None and service._flights[url].followers < 2:
        time.sleep(0.01)
    route.gate.set()
    for thread in threads:
        thread.join(10)
    return answers


def test_concurrent_requests_for_one_url_share_its_download_and_inference(
    settings: Settings, image_server: ImageServer
) -> None:
    route = image_server.routes["/slow.jpg"] = _Gated(200, _jpeg((120, 30, 60)))
    fake = FakeClassifier()
    app = create_app(replace(settings, cache_size=8), fake)
    answers = _three_at_once(app, image_server.url("/slow.jpg"), route)
    assert [a.status_code for a in answers] == [200] * 3 and len({bytes(a.data) for a in answers}) == 1
    assert image_server.hits.count("/slow.jpg") == 1 and len(fake.seen) == 1


def test_the_followers_of_a_failed_download_get_its_error(settings: Settings, image_server: ImageServer) -> None:
    route = image_server.routes["/broken.jpg"] = _Gated(500, b"")
    app = create_app(replace(settings, cache_size=8), FakeClassifier())
    answers = _three_at_once(app, image_server.url("/broken.jpg"), route)
    assert [a.get_json()["error"]["code"] for a in answers] == ["upstream_error"] * 3
    assert image_server.hits.count("/broken.jpg") == 1

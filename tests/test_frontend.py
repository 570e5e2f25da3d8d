"""The front door as an ASGI app, driven directly: admission before the body, caps, deadlines, the
whole body handed to the app, /health on the loop. (tests/test_load.py has it under real gunicorn.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask

from nsfw import create_app
from nsfw.config import Settings
from nsfw.web import routes
from nsfw.web.frontend import Front, _call_wsgi
from tests.support import FakeClassifier, ImageServer, corpus_bytes


class Conversation:
    """One request: scripted receive() messages (then waiting forever), and what was sent back."""

    def __init__(self, messages: list[dict[str, Any]], *, wait_after: bool = True) -> None:
        self.messages = list(messages)
        self.received = 0
        self.sent: list[dict[str, Any]] = []
        self.wait_after = wait_after

    async def receive(self) -> dict[str, Any]:
        if self.messages:
            self.received += 1
            return self.messages.pop(0)
        if self.wait_after:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return self.sent[0]["status"]

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def json(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


def _scope(path: str, method: str = "POST", headers: list[tuple[bytes, bytes]] | None = None) -> dict[str, Any]:
    path, _, query = path.partition("?")
    return {
        "type": "http",
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "query_string": query.encode(),
        "headers": headers or [],
        "client": ("10.0.0.1", 5000),
        "server": ("127.0.0.1", 8080),
    }


@pytest.fixture()
def app(settings: Settings) -> Flask:
    return create_app(replace(settings, body_timeout=0.2, max_queue=2, max_queue_per_caller=2), FakeClassifier())


@pytest.fixture()
def front(app: Flask) -> Iterator[Front]:
    front = Front(app, app.extensions["nsfw"], threads=4)
    yield front
    front.pool.shutdown(wait=True)


def _run(front: Front, scope: dict[str, Any], talk: Conversation, timeout: float = 5) -> Conversation:
    asyncio.run(asyncio.wait_for(front(scope, talk.receive, talk.send), timeout))
    return talk


def test_health_is_answered_on_the_loop_without_the_app(front: Front) -> None:
    front.app = None  # any call into the WSGI app would fail
    talk = _run(front, _scope("/health", "GET"), Conversation([]))
    assert talk.status == 200 and talk.json["status"] == "ok" and talk.json["model"] == "mobilenet_v2"


def test_a_chunked_body_reaches_the_app_whole_with_its_length(front: Front) -> None:
    jpeg = corpus_bytes("grace_hopper.jpg")
    pieces = [jpeg[i : i + 1000] for i in range(0, len(jpeg), 1000)]
    messages = [{"type": "http.request", "body": p, "more_body": True} for p in pieces]
    messages.append({"type": "http.request", "body": b"", "more_body": False})
    headers = [(b"content-type", b"image/jpeg"), (b"transfer-encoding", b"chunked")]
    talk = _run(front, _scope("/predict", headers=headers), Conversation(messages))
    assert talk.status == 200 and set(talk.json) == {"drawings", "hentai", "neutral", "porn", "sexy"}


def test_a_content_length_over_the_cap_is_413_before_any_body(front: Front) -> None:
    cap = routes.body_limit(front.settings, "/predict", "image/jpeg")
    headers = [(b"content-type", b"image/jpeg"), (b"content-length", str(cap + 1).encode())]
    talk = _run(front, _scope("/predict", headers=headers), Conversation([], wait_after=False))
    assert talk.status == 413 and talk.json["error"]["code"] == "payload_too_large"
    assert talk.headers[b"connection"] == b"close"


def test_a_body_passing_the_cap_while_it_streams_is_413(front: Front) -> None:
    cap = routes.body_limit(front.settings, "/predict/batch", "application/json")
    chunk = b"x" * (1 << 20)
    messages = [{"type": "http.request", "body": chunk, "more_body": True}] * (cap // len(chunk) + 2)
    talk = _run(front, _scope("/predict/batch", headers=[(b"transfer-encoding", b"chunked")]), Conversation(messages))
    assert talk.status == 413


def test_a_body_that_stalls_is_408(front: Front) -> None:
    headers = [(b"content-type", b"image/jpeg"), (b"content-length", b"5000")]
    talk = _run(
        front,
        _scope("/predict", headers=headers),
        Conversation([{"type": "http.request", "body": b"ab", "more_body": True}]),
    )
    assert talk.status == 408 and talk.json["error"]["code"] == "request_timeout"


def test_past_the_queue_the_answer_comes_before_the_body(front: Front) -> None:
    """Two admitted requests wait for bodies that never come; the third is refused unread."""

    async def scenario() -> Conversation:
        stalled = [Conversation([]) for _ in range(2)]
        tasks = [asyncio.create_task(front(_scope("/predict"), t.receive, t.send)) for t in stalled]
        await asyncio.sleep(0.05)
        third = Conversation([{"type": "http.request", "body": b"x", "more_body": False}])
        await front(_scope("/predict"), third.receive, third.send)
        for task in tasks:
            await task  # their bodies time out (408)
        assert [t.status for t in stalled] == [408, 408]
        return third

    third = asyncio.run(scenario())
    assert third.status == 503 and third.headers[b"retry-after"] == b"1"
    assert third.json["error"]["code"] == "overloaded"
    assert front.admission.in_use == 0


@pytest.mark.parametrize(
    "content_type", ["image/jpeg", "application/json", "application/x-www-form-urlencoded", "text/plain", ""]
)
def test_a_refused_client_that_asked_to_wait_is_not_read_from(front: Front, content_type: str) -> None:
    """The front refuses by the same cap as the app (a form body's is 64 KiB, a JSON one's an image
    in base64): never a 100 Continue (the first receive) for a body the app would refuse with 413."""
    cap = routes.body_limit(front.settings, "/predict", content_type)
    headers = [(b"content-length", str(cap + 1).encode()), (b"expect", b"100-continue")]
    if content_type:
        headers.append((b"content-type", f"{content_type}; charset=utf-8".encode()))
    talk = Conversation([{"type": "http.request", "body": b"x", "more_body": True}])
    _run(front, _scope("/predict", headers=headers), talk)
    assert talk.status == 413 and talk.received == 0


def test_a_url_prediction_goes_through_the_app(front: Front, image_server: ImageServer) -> None:
    url = image_server.add_file("/a.jpg", corpus_bytes("grace_hopper.jpg"))
    talk = _run(front, _scope(f"/predict?url={url}"), Conversation([{"type": "http.request", "body": b""}]))
    assert talk.status == 200 and "neutral" in talk.json


def test_call_wsgi_joins_the_answer_and_closes_the_iterable() -> None:
    closed = []

    class Body(list):
        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        write = start_response("201 Created", [("X-A", "1")])
        write(b"early ")
        return Body([b"then ", b"late"])

    status, headers, body = _call_wsgi(app, {})
    assert (status, headers, body, closed) == (201, [(b"x-a", b"1")], b"early then late", [True])


def test_a_request_whose_client_left_keeps_its_slot_and_body_until_the_app_is_done(front: Front) -> None:
    import threading

    release, read = threading.Event(), []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        release.wait(5)
        read.append(environ["wsgi.input"].read())  # still open: the thread closes it, not the coroutine
        start_response("200 OK", [])
        return [b"done"]

    front.app = app

    async def scenario() -> None:
        talk = Conversation([{"type": "http.request", "body": b"the body", "more_body": False}])
        task = asyncio.create_task(
            front(_scope("/predict", headers=[(b"content-length", b"8")]), talk.receive, talk.send)
        )
        await asyncio.sleep(0.1)
        task.cancel()  # gunicorn does this when the client disconnects
        await asyncio.gather(task, return_exceptions=True)
        assert front.admission.in_use == 1  # the app still works on it
        release.set()
        for _ in range(100):
            if front.admission.in_use == 0:
                break
            await asyncio.sleep(0.02)

    asyncio.run(scenario())
    assert read == [b"the body"] and front.admission.in_use == 0


def _streaming_app(chunks: int, gate: Any, made: list[int]) -> Any:
    """A WSGI app whose answer is `chunks` chunks of 256 KiB, made one by one; after the first 6 it waits
    for `gate`, which the test opens only once the client has had body bytes (so a front that joined
    the whole answer before sending any would wait forever: the test would fail at its timeout)."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "application/x-ndjson")])

        def body() -> Iterator[bytes]:
            for n in range(chunks):
                if n == 6:
                    assert gate.wait(10), "the client never got a byte of the answer"
                made.append(n)
                yield bytes([65 + n % 26]) * (256 * 1024)

        return body()

    return app


def _closing(inner: Any, closed: Any) -> Any:
    """inner, whose answer's iterable sets `closed` when the front closes it."""

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        body = inner(environ, start_response)

        class Closing:
            def __iter__(self) -> Iterator[bytes]:
                return body

            def close(self) -> None:
                body.close()
                closed.set()

        return Closing()

    return app


def test_a_long_answer_is_streamed_not_joined(front: Front) -> None:
    """Finding 15 of issue 22 (fails before it: the front joined every answer whole, so an export of
    50,000 items sat in the worker's memory twice). Past STREAM_AFTER bytes the answer goes out as
    it is made, the app's thread waiting while the client reads."""
    import threading

    gate, made = threading.Event(), []
    front.app = _streaming_app(40, gate, made)

    async def scenario() -> Conversation:
        talk = Conversation([{"type": "http.request", "body": b""}], wait_after=True)
        original = talk.send

        async def send(message: dict[str, Any]) -> None:
            await original(message)
            if message.get("body"):
                gate.set()

        talk.send = send  # type: ignore[method-assign]
        await front(_scope("/reviews/export", method="GET"), talk.receive, talk.send)
        return talk

    talk = asyncio.run(scenario())
    bodies = [message for message in talk.sent[1:]]
    assert talk.status == 200 and len(bodies) > 2 and not bodies[-1].get("more_body", False)
    assert sum(len(message.get("body", b"")) for message in bodies) == 40 * 256 * 1024 and made == list(range(40))


def test_a_client_that_leaves_mid_stream_stops_the_app(front: Front) -> None:
    """The streaming thread gives up when nobody reads: the app's iterable is closed, its work ends."""
    import threading

    gate, made = threading.Event(), []
    gate.set()
    closed = threading.Event()
    front.app = _closing(_streaming_app(400, gate, made), closed)

    async def scenario() -> None:
        talk = Conversation([{"type": "http.request", "body": b""}])
        sent: list[dict[str, Any]] = []

        async def slow(message: dict[str, Any]) -> None:
            sent.append(message)
            if len(sent) > 2:
                await asyncio.sleep(3600)  # a slow client, until it leaves

        task = asyncio.create_task(front(_scope("/reviews/export", method="GET"), talk.receive, slow))
        while len(sent) < 3:
            await asyncio.sleep(0.01)
        task.cancel()  # gunicorn does this when the client disconnects
        await asyncio.gather(task, return_exceptions=True)
        for _ in range(500):
            if closed.is_set() and front.admission.in_use == 0:
                return
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert closed.is_set() and len(made) < 400 and front.admission.in_use == 0


def test_a_client_that_stops_reading_a_stream_is_cut_off(front: Front, monkeypatch: pytest.MonkeyPatch) -> None:
    """A streamed answer whose client stops reading ends after STREAM_SEND_SECONDS (the export's store
    read with it), instead of holding its thread and its read for good (found by the review of issue 22)."""
    import threading

    from nsfw.web import frontend

    monkeypatch.setattr(frontend, "STREAM_SEND_SECONDS", 0.2)
    gate, made = threading.Event(), []
    gate.set()
    closed = threading.Event()
    front.app = _closing(_streaming_app(400, gate, made), closed)

    async def scenario() -> list[BaseException | None]:
        talk = Conversation([{"type": "http.request", "body": b""}])
        sent: list[dict[str, Any]] = []

        async def stuck(message: dict[str, Any]) -> None:
            sent.append(message)
            if len(sent) > 2:
                await asyncio.sleep(3600)  # the client's window is full: gunicorn's drain never ends

        outcome = await asyncio.gather(
            front(_scope("/reviews/export", method="GET"), talk.receive, stuck), return_exceptions=True
        )
        for _ in range(500):
            if closed.is_set() and front.admission.in_use == 0:
                break
            await asyncio.sleep(0.01)
        return outcome

    outcome = asyncio.run(scenario())
    assert isinstance(outcome[0], asyncio.CancelledError)  # gunicorn closes it as a client that left
    assert closed.is_set() and len(made) < 400 and front.admission.in_use == 0


@pytest.mark.parametrize("stalled_at", [1, 2])
def test_a_client_that_reads_nothing_of_a_stream_is_cut_off_too(
    front: Front, monkeypatch: pytest.MonkeyPatch, stalled_at: int
) -> None:
    """Found by the second review of issue 22: the status line and the first payload of a stream were
    sent with no deadline, so a client that read nothing at all held the app (and its store read)."""
    import threading

    from nsfw.web import frontend

    monkeypatch.setattr(frontend, "STREAM_SEND_SECONDS", 0.2)
    gate, made = threading.Event(), []
    gate.set()
    closed = threading.Event()
    front.app = _closing(_streaming_app(400, gate, made), closed)

    async def scenario() -> list[BaseException | None]:
        talk = Conversation([{"type": "http.request", "body": b""}])
        sent: list[dict[str, Any]] = []

        async def stuck(message: dict[str, Any]) -> None:
            sent.append(message)
            if len(sent) >= stalled_at:
                await asyncio.sleep(3600)

        outcome = await asyncio.gather(
            front(_scope("/reviews/export", method="GET"), talk.receive, stuck), return_exceptions=True
        )
        for _ in range(500):
            if closed.is_set() and front.admission.in_use == 0:
                break
            await asyncio.sleep(0.01)
        return outcome

    outcome = asyncio.run(scenario())
    assert isinstance(outcome[0], asyncio.CancelledError)
    assert closed.is_set() and len(made) < 400 and front.admission.in_use == 0

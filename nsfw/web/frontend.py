"""The worker's front door: requests are read whole on an event loop before a thread of the app sees one.

gunicorn's gthread worker reads each request in the thread that answers it, so a client that drips its
headers or its body holds a thread for as long as it likes (measured: 24 such connections took /health
down). This module is the gunicorn worker class that `gunicorn.conf.py` names instead:

- gunicorn's own asyncio worker (gunicorn.workers.gasgi) accepts and parses connections; a slow client
  costs a socket and a coroutine, never a thread. Its keep-alive timer bounds the headers of every
  request after the first; `_Protocol` arms the same timer at connect, so the first request's
  headers have the same deadline (gunicorn 27 has no setting for it).
- `Front` (ASGI) then decides admission *before* reading the body: at most NSFW_MAX_QUEUE requests per
  worker, a fair share of them per client address (nsfw.slots), the rest a fast 503 `overloaded`
  without a byte of their body read. An admitted body is read within NSFW_BODY_TIMEOUT (408 past it)
  under its cap (413 from Content-Length alone when it says too much), into a spooled file: at most
  1 MiB of it in memory, the rest on disk.
- The complete request goes to the Flask app on a pool of GUNICORN_THREADS threads, with the environ
  a2wsgi builds from the ASGI scope and the spooled body as `wsgi.input`; an answer of up to
  STREAM_AFTER bytes comes back in one hand-over (a2wsgi's own adapter crossed threads once per
  message, and those crossings were a third of the event loop's time under a flood). A longer one (an
  export of the review store) is streamed: its start, then its chunks through a queue of
  STREAM_CHUNKS, the app's thread waiting while the client reads, so it never sits whole in memory.
  Responses are written by the event loop: a client that never reads costs no thread, except the one
  streaming to it, which gives up when the client leaves.
- What gunicorn answers by itself (a request it cannot parse: 400, 414, 431, 501) is our JSON error
  shape (`_Protocol`), and a transfer coding other than chunked is refused (501) before the body.
- `GET /health` is answered on the event loop itself (api.health_answer, the view's own body),
  never queued behind a thread: under a flood of 1,400 requests a second it answered with p99 244 ms
  through a thread of its own, because that thread waited for the GIL behind the app's threads.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import IO, Any

from a2wsgi.wsgi import build_environ
from gunicorn.asgi import protocol as gunicorn_protocol
from gunicorn.workers import gasgi
from werkzeug.exceptions import HTTPException

from nsfw import errors
from nsfw.fetch import SPOOL_MEMORY_BYTES
from nsfw.pipeline.service import PredictionService
from nsfw.slots import FairSlots
from nsfw.web import access, compat, observe, routes, state
from nsfw.web.api import health_answer

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

LINGER_SECONDS = 2.0
SWITCH_INTERVAL = 0.001
APP_NICENESS = 5


def _with_request_id(scope: Scope, rid: str) -> Scope:
    """The scope with the request id the front decided, so that the app decides the same."""
    headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() != b"x-request-id"]
    return {**scope, "headers": [*headers, (b"x-request-id", rid.encode())]}


def _stamped(send: Send, rid: str) -> Send:
    """send, with the request id on every answer's headers (the app's carry it already)."""
    stamp = (b"x-request-id", rid.encode())

    async def stamped(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"]
            message = {**message, "headers": [*headers, stamp]}
        await send(message)

    return stamped


def _header_getter(scope: Scope) -> Callable[[str], str | None]:
    def get(name: str) -> str | None:
        value = _header(scope, name.lower().encode())
        return None if value is None else value.decode("latin-1")

    return get


def _mimetype(scope: Scope) -> str:
    """The Content-Type's media type, lower case, as Werkzeug reads it for the app."""
    value = _header(scope, b"content-type") or b""
    return value.decode("latin-1").split(";", 1)[0].strip().lower()


class Front:
    """ASGI: admission, then the whole body, then the WSGI app on a thread (module docstring)."""

    def __init__(self, wsgi_app: Any, service: PredictionService, threads: int) -> None:
        self.service = service
        self.settings = service.settings
        self.app = wsgi_app
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="app", initializer=_yield_to_the_loop)
        self.admission = FairSlots(self.settings.max_queue, self.settings.max_queue_per_caller)
        # The app's route rules, to label the front's own answers as the app labels its answers.
        self._routes = wsgi_app.url_map.bind("localhost")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: not served
            return
        if FACTS in scope:  # the client address as the access log shows it, refusals included
            scope[FACTS]["client"] = self._caller(scope)
        rid = observe.request_id(_header_getter(scope)(observe.HEADER))
        observe.current.set(rid)  # this request's task: the front's own log lines name it
        scope, send = _with_request_id(scope, rid), _stamped(send, rid)
        scope["nsfw.started"] = time.perf_counter()
        if scope["path"] == routes.HEALTH_PATH and scope["method"] == "GET":
            body, status = health_answer(self.service)
            await _send_json(send, status, body, [])
            self._count(scope, status)
            return
        if (self.settings.api_keys or self.settings.metrics_token) and not routes.may_use_session(
            scope["path"], _header_getter(scope)("Cookie")
        ):
            try:  # before admission and before any of the body: a stranger costs neither
                key = access.check(
                    scope["path"],
                    _header_getter(scope),
                    self.settings.api_keys,
                    self.settings.metrics_token,
                    self.settings.compat_open,
                )
                if key is not None and FACTS in scope:
                    scope[FACTS]["key"] = key.name
            except errors.NsfwError as error:
                await self._refuse(scope, send, error)
                await _linger(scope, receive)
                return
        caller = self._caller(scope)
        if not self.admission.try_acquire(caller):
            await self._refuse(scope, send, errors.Overloaded(f"{self.admission.total} requests queued in this worker"))
            await _linger(scope, receive)
            return
        handed_over: list[asyncio.Future[Any]] = []
        try:
            await self._admitted(scope, receive, send, handed_over)
        finally:
            # A request the app is working on keeps its slot until the app is done, even when the
            # client left (gunicorn cancels this coroutine then): the slots bound the app's threads.
            if handed_over:
                handed_over[0].add_done_callback(lambda _: self.admission.release(caller))
            else:
                self.admission.release(caller)

    def _caller(self, scope: Scope) -> str:
        """Whose share of the worker this request takes: the client address, as the app reads it
        (access.client_of), trusted proxies' forwarded-for header included."""
        peer = scope["client"][0] if scope.get("client") else "-"
        if not self.settings.trusted_proxies:
            return peer
        name = self.settings.client_address_header.lower().encode()
        forwarded = [value.decode("latin-1") for key, value in scope["headers"] if key.lower() == name]
        return access.client_of(
            peer, forwarded, self.settings.trusted_proxies, single=not self.settings.forwards_a_list
        )

    async def _admitted(self, scope: Scope, receive: Receive, send: Send, handed_over: list[Any]) -> None:
        cap = routes.body_limit(self.settings, scope["path"], _mimetype(scope))
        try:
            body = await asyncio.wait_for(_read_body(scope, receive, cap), self.settings.body_timeout)
        except errors.NsfwError as error:
            await self._refuse(scope, send, error)
            await _linger(scope, receive)
            return
        except TimeoutError:
            await self._refuse(
                scope, send, errors.RequestTimeout(f"body not complete in {self.settings.body_timeout} s")
            )
            return
        if body is None:  # the client left while sending
            return
        size = body.seek(0, 2)
        body.seek(0)
        environ = build_environ(_with_length(scope, size), body)  # type: ignore[arg-type]
        environ[FACTS] = scope.get(FACTS, {})  # the app's facts reach gunicorn's access log
        loop = asyncio.get_running_loop()
        stream = _Stream(loop)
        # The app's thread closes the body when it is done with it, however this coroutine ends.
        future = loop.run_in_executor(self.pool, _call_wsgi, self.app, environ, stream)
        handed_over.append(future)
        future.add_done_callback(lambda _: stream.started.done() or stream.started.set_result(None))
        try:
            # shield: a cancelled wait (the client left) must not cancel the future the slot waits on.
            started = await asyncio.shield(stream.started)
            if started is None:  # the whole answer, in one hand-over
                status, headers, payload = await asyncio.shield(future)
                await send({"type": "http.response.start", "status": status, "headers": headers})
                await send({"type": "http.response.body", "body": payload})
                return
            status, headers, payload = started
            # A client that stops reading ends the answer (and the app's work, its store read among
            # it) instead of holding them for good: every send of a stream has a deadline.
            await _sending(send, {"type": "http.response.start", "status": status, "headers": headers})
            await _sending(send, {"type": "http.response.body", "body": payload, "more_body": True})
            while (chunk := await stream.chunks.get()) is not None:
                stream.room.release()
                await _sending(send, {"type": "http.response.body", "body": chunk, "more_body": True})
            if stream.failed:  # no last chunk: the client sees a cut answer, never a short one that looks whole
                raise RuntimeError("the app failed in the middle of a streamed answer")
            await _sending(send, {"type": "http.response.body", "body": b""})
        finally:
            stream.abandoned = True  # a thread still streaming stops at its next chunk

    async def _refuse(self, scope: Scope, send: Send, error: errors.NsfwError) -> None:
        """An answer before the app: the service's error shape, or a platform adapter's (compat/)."""
        platform_answer = compat.refusal_for(scope["path"], error, self.settings)
        if platform_answer is None:
            await _answer(send, error)
            self._count(scope, error.status)
            return
        _note(error)
        headers = platform_answer.headers.items()
        extra = [(b"connection", b"close"), *((k.lower().encode(), v.encode()) for k, v in headers)]
        await _send_body(send, platform_answer.status, platform_answer.body, extra, platform_answer.content_type)
        self._count(scope, platform_answer.status)

    def _count(self, scope: Scope, status: int) -> None:
        """An answer the front gave itself, in the metrics (the app counts its own), by route rule."""
        try:
            rule, _ = self._routes.match(scope["path"], method=scope["method"], return_rule=True)
            route = rule.rule
        except HTTPException:
            route = observe.UNMATCHED
        facts = scope.get(FACTS, {})
        facts["route"] = route
        seconds = time.perf_counter() - scope["nsfw.started"]
        observe.count(scope["method"], route, status, seconds, facts.get("key", "-"))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.pool.shutdown(wait=False)
                await send({"type": "lifespan.shutdown.complete"})
                return


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


async def _read_body(scope: Scope, receive: Receive, cap: int) -> IO[bytes] | None:
    """The whole body in a spooled file, or None when the client disconnected; 413 past the cap.
    Refused before any of it is read (and before any 100 Continue): a Content-Length over the cap,
    and a transfer coding other than chunked (gunicorn lets gzip and deflate through undecoded)."""
    coding = _header(scope, b"transfer-encoding")
    if coding is not None and coding.strip().lower() != b"chunked":
        raise errors.TransferCodingNotImplemented(f"Transfer-Encoding {coding[:100]!r}")
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise errors.PayloadTooLarge(f"Content-Length {int(declared)} over {cap}")
    body: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY_BYTES)  # noqa: SIM115 - closed by caller
    size = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body.close()
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                raise errors.PayloadTooLarge(f"body passed {cap} bytes")
            body.write(chunk)
            if not message.get("more_body", False):
                return body
    except BaseException:
        body.close()
        raise


def _with_length(scope: Scope, size: int) -> Scope:
    """The scope as the app should see it: a known Content-Length, since the body is all here."""
    framing = (b"content-length", b"transfer-encoding")
    headers = [(k, v) for k, v in scope.get("headers", ()) if k.lower() not in framing]
    if size or scope["method"] not in ("GET", "HEAD"):
        headers.append((b"content-length", str(size).encode()))
    return {**scope, "headers": headers}


def _yield_to_the_loop() -> None:
    """App threads run at a lower CPU priority (nice +APP_NICENESS, Linux: per thread) than the event
    loop, so that on one busy core the loop, and /health with it, is scheduled first; when the loop is
    idle they get the whole core as before."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + APP_NICENESS)
    except (AttributeError, OSError):  # not Linux, or not permitted: same priority as the loop
        pass


# Answers up to this size come back whole, in one hand-over; longer ones are streamed.
STREAM_AFTER = 1024 * 1024
# Chunks of a streamed answer waiting for the client at most (the app's thread waits past them).
STREAM_CHUNKS = 4
# How often a streaming thread blocked on a slow client looks whether it left.
STREAM_POLL_SECONDS = 1.0
# How long a client may take to read one chunk of a streamed answer before it is cut off.
STREAM_SEND_SECONDS = 30.0


class _Stream:
    """A streamed answer between an app thread and the event loop: `started` (set by the thread with
    status, headers and the first bytes, or None by the loop when the answer came whole), then
    `chunks` (None ends them). At most STREAM_CHUNKS wait for the client (`room`, taken by the thread
    before each hand-over, given back by the loop as it sends one): a hand-over never waits on the
    loop itself, so it is never half done. `abandoned` tells the thread that nobody reads any more."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.started: asyncio.Future[tuple[int, list[tuple[bytes, bytes]], bytes] | None] = loop.create_future()
        self.chunks: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.room = threading.Semaphore(STREAM_CHUNKS)
        self.abandoned = False
        self.failed = False

    def start(self, status: int, headers: list[tuple[bytes, bytes]], first: bytes) -> None:
        def settle() -> None:
            if not self.started.done():
                self.started.set_result((status, headers, first))

        self.loop.call_soon_threadsafe(settle)

    def put(self, chunk: bytes | None) -> bool:
        """Hand a chunk to the loop (None: the end), waiting while the client reads; False when it left."""
        while not self.abandoned:
            if self.room.acquire(timeout=STREAM_POLL_SECONDS):
                try:
                    self.loop.call_soon_threadsafe(self.chunks.put_nowait, chunk)
                except RuntimeError:  # the loop is closed: the worker is stopping
                    return False
                return True
        return False


async def _sending(send: Send, message: Message) -> None:
    """One message of a streamed answer, within STREAM_SEND_SECONDS; past them the client is taken
    for gone (gunicorn closes the connection, as for a client that left, without an error's log)."""
    try:
        await asyncio.wait_for(send(message), STREAM_SEND_SECONDS)
    except TimeoutError:
        log.info("front: the client read nothing of the answer for %.0f s; cut off", STREAM_SEND_SECONDS)
        raise asyncio.CancelledError from None


def _call_wsgi(
    app: Any, environ: dict[str, Any], stream: _Stream | None = None
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The whole WSGI call on an app thread: status, headers and the body, joined (the answers are
    mostly small JSON): one hand-over to the event loop per request. An answer past STREAM_AFTER
    bytes, with a stream to go to, is streamed instead (the returned body is then empty). The body the
    app reads is the spooled file."""
    started: list[tuple[int, list[tuple[bytes, bytes]]]] = []
    chunks: list[bytes] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        started[:] = [(int(status.split(" ", 1)[0]), encoded)]
        return chunks.append

    streaming = False
    try:
        result = app(environ, start_response)
        try:
            size = 0
            if stream is not None:
                stream.failed = True  # until the last chunk is in
            for chunk in result:
                if streaming:
                    if not stream.put(chunk):  # type: ignore[union-attr]
                        break  # the client left: the iterable is closed below, its work stops
                    continue
                chunks.append(chunk)
                size += len(chunk)
                if stream is not None and size > STREAM_AFTER:
                    streaming = True
                    stream.start(*started[0], b"".join(chunks))
                    chunks.clear()
            if stream is not None:
                stream.failed = False
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            if streaming:
                stream.put(None)  # type: ignore[union-attr]
    finally:
        body = environ.get("wsgi.input")
        if body is not None:
            body.close()
    status, headers = started[0]
    return status, headers, b"".join(chunks)


class _OverloadLog:
    """Overload refusals come by the thousand a second in a flood: one log line a second counts them."""

    def __init__(self) -> None:
        self.count, self.since = 0, time.monotonic()

    def note(self, error: errors.NsfwError) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.since >= 1.0:
            log.info("front -> 503 overloaded x%d in %.1f s (last: %s)", self.count, now - self.since, error.detail)
            self.count, self.since = 0, now


_overloads = _OverloadLog()


async def _answer(send: Send, error: errors.NsfwError) -> None:
    """An error the front decided, in the app's JSON shape; the connection closes (its body is unread)."""
    _note(error)
    extra = [(b"connection", b"close"), *((k.lower().encode(), v.encode()) for k, v in error.headers.items())]
    await _send_body(send, error.status, error.to_json(), extra)


def _note(error: errors.NsfwError) -> None:
    """The front's refusal in the log (overloads summed up, not one line each)."""
    if isinstance(error, errors.Overloaded):
        _overloads.note(error)
    else:
        log.info("front -> %d %s: %s", error.status, error.code, error.detail)


async def _send_json(send: Send, status: int, body: object, extra: list[tuple[bytes, bytes]]) -> None:
    await _send_body(send, status, json.dumps(body, separators=(",", ":")).encode() + b"\n", extra)


async def _send_body(
    send: Send, status: int, payload: bytes, extra: list[tuple[bytes, bytes]], content_type: str = "application/json"
) -> None:
    headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(payload)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def _linger(scope: Scope, receive: Receive) -> None:
    """After an early answer, read and drop what the client is still sending, for a moment, so that it
    reads our answer instead of a reset (nginx's lingering close). A client that asked to wait
    (Expect: 100-continue) sends nothing more, and reading would invite it to."""
    expect = _header(scope, b"expect")
    if expect is not None and expect.lower() == b"100-continue":
        return
    try:
        async with asyncio.timeout(LINGER_SECONDS):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect" or not message.get("more_body", False):
                    return
    except TimeoutError:
        return


# gunicorn's own answers to requests it cannot parse (its protocol's _send_error_response), as ours.
_SERVER_ERRORS: dict[int, type[errors.NsfwError]] = {
    400: errors.BadRequest,
    414: errors.UriTooLong,
    431: errors.HeadersTooLarge,
    501: errors.TransferCodingNotImplemented,
}


def server_error(status: int) -> errors.NsfwError:
    """The error of our tree for a status gunicorn answers by itself."""
    if status in _SERVER_ERRORS:
        return _SERVER_ERRORS[status]()
    if 400 <= status < 500:
        error = errors.BadRequest()
        error.status = status  # e.g. 426 for a bad upgrade: its status, our shape
        return error
    return errors.NsfwError()


_QUERY = re.compile(r"\?[^\s'\"]*")


# The scope's and the WSGI environ's key for what the app and the front learn about a request and
# gunicorn's access log prints (nsfw/accesslog.py): route rule, key name, client address, verdicts.
FACTS = observe.FACTS
_FACTS_KEPT = 8  # per connection: its requests are answered one after another


class _Protocol(gunicorn_protocol.ASGIProtocol):
    """gunicorn's protocol, with three changes:

    - the keep-alive timer is also armed at connect: a first request whose headers are not complete
      within `keepalive` seconds is closed, as later ones already are;
    - the answers gunicorn writes itself, for requests it cannot parse (a malformed request line or
      header, a bad chunk size, a request line over `limit_request_line`, too many headers, an unknown
      transfer coding) and for an app that failed to start its response, are our JSON error shape,
      not its text/plain page. Its message, which may quote the request, goes to the log only;
    - each request's scope gets a dict of facts (FACTS) that the front and the app fill, and the
      environ gunicorn builds for its access log (only for that) carries the same dict.
    """

    def _build_http_scope(self, request: Any, sockname: Any, peername: Any) -> dict[str, Any]:
        scope: dict[str, Any] = super()._build_http_scope(request, sockname, peername)
        facts = self.__dict__.setdefault("_nsfw_facts", {})
        while len(facts) >= _FACTS_KEPT:  # access logging off: nothing takes them
            facts.pop(next(iter(facts)))
        facts[id(request)] = scope[FACTS] = {}
        return scope

    def _build_environ(self, request: Any, sockname: Any, peername: Any) -> dict[str, Any]:
        environ: dict[str, Any] = super()._build_environ(request, sockname, peername)
        environ[FACTS] = self.__dict__.get("_nsfw_facts", {}).pop(id(request), {})
        return environ

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self._closed and self._keepalive_handle is None:
            self._arm_keepalive_timer()

    def _send_error_response(self, status: int, message: str, extra_headers: Any = ()) -> None:
        if self._closed:  # e.g. gunicorn's 500 for a client that left before the app answered
            log.debug("server -> %d to a closed connection: %s", status, message[:200])
            return
        error = server_error(status)
        # gunicorn's message may quote the request line, and with it a signed URL's query.
        log.info("server -> %d %s: %s", error.status, error.code, _QUERY.sub("?REDACTED", message[:200]))
        payload = error.to_json()
        extra = "".join(f"{name}: {value}\r\n" for name, value in extra_headers)
        head = (
            f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n"
            f"{extra}Connection: close\r\n\r\n"
        )
        self._safe_write(head.encode("latin-1") + payload)


class Worker(gasgi.ASGIWorker):
    """gunicorn's asyncio worker serving the Flask app through Front (`worker_class` in gunicorn.conf.py)."""

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """gasgi warns that threads are unused; here they size the app's pool."""

    def init_process(self) -> None:
        # The event loop (every connection, /health) shares the GIL with the app's threads; handing it
        # over every 1 ms instead of Python's 5 ms keeps the loop responsive while they compute.
        sys.setswitchinterval(SWITCH_INTERVAL)
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        self.wsgi = self.asgi  # the Flask app, as gunicorn.conf.py's hooks expect
        self.asgi = Front(self.wsgi, state.service(self.wsgi), threads=self.cfg.threads)
        # Everything loaded so far lives as long as the worker: out of the collector's sight, a full
        # collection under load no longer walks the model runtime's and Flask's objects (it paused the
        # event loop, and so /health, for tens of milliseconds).
        gc.collect()
        gc.freeze()

    async def _serve(self) -> None:
        # gasgi builds each connection's protocol from its module global; this worker's has the deadline.
        gasgi.ASGIProtocol = _Protocol
        await super()._serve()
